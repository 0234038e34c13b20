"""Preprocessing throughput: patients per minute, cold and warm cache, and peak memory.

Usage: python benchmarks/bench_preprocess.py [--profile demo] [--workers N] [--limit N]

Runs :func:`utils.preprocessing.run.run_preprocessing` on the profile's cohort (generated into a
temporary folder if absent) into a temporary cache, twice: cold (everything computed) and
warm (inputs hashed, cache verified, nothing recomputed). Also reports CPU seconds per
patient, so that a run on a busy machine (see ``load_average``) can be read as the
throughput the cores would give on their own. Writes
``benchmarks/results/bench_preprocess_<profile>.json``.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

import pandas as pd

from benchmarks.common import write_result
from utils.cohort.manifest import load_manifest
from utils.config import get_paths, get_profile
from utils.preprocessing.params import PreprocessParams
from utils.preprocessing.run import run_preprocessing

TARGET_COLD_PER_MIN = 60.0
TARGET_WARM_FRACTION = 0.05


def cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


def cohort_manifest(profile_name: str, tmp: Path, limit: int | None) -> Path:
    """The profile's manifest (generated if missing), optionally cut to ``limit`` patients."""
    manifest = get_paths(profile_name).manifest
    if not manifest.exists():
        from utils.cohort.generate import generate_cohort

        manifest = generate_cohort(profile_name, tmp / "phantom", progress=False)
    if not limit:
        return manifest
    table = load_manifest(manifest)
    keep = sorted(table["patient_id"].unique())[:limit]
    subset = table[table["patient_id"].isin(keep)].copy()
    subset["image_path"], subset["mask_path"] = subset["image_file"], subset["mask_file"]
    target = tmp / "manifest_subset.csv"
    subset.drop(columns=["image_file", "mask_file"]).to_csv(target, index=False)
    return target


def timed_run(manifest: Path, cache: Path, profile_name: str, workers: int
              ) -> tuple[pd.DataFrame, float, float]:
    """(processed table, wall seconds, CPU seconds) of one run."""
    cpu0, wall0 = cpu_seconds(), time.perf_counter()
    table = run_preprocessing(manifest, cache, profile_name, workers=workers, progress=False)
    return table, time.perf_counter() - wall0, cpu_seconds() - cpu0


def summary(table: pd.DataFrame) -> dict:
    ok = table[table["status"] == "ok"]
    return {"patients": len(table), "ok": len(ok),
            "errors_by_type": table.loc[table["status"] != "ok", "error_type"]
            .value_counts().to_dict(),
            "errors": table.loc[table["status"] != "ok", "error"].tolist(),
            "padded": int(ok["padded"].astype(bool).sum()),
            "registration_fallback_used": int((ok["reg_attempt"] > 1).sum()),
            "reg_dice_after_median": float(ok["reg_dice_after"].median()),
            "reg_dice_after_min": float(ok["reg_dice_after"].min()),
            "reg_translation_mm_median": float(ok["reg_translation_mm"].median())}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--profile", default="demo")
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--limit", type=int, default=None, help="first N patients only")
    args = parser.parse_args()
    profile = get_profile(args.profile)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        manifest = cohort_manifest(profile.name, tmp, args.limit)
        cold, cold_s, cold_cpu = timed_run(manifest, tmp / "cache", profile.name, args.workers)
        warm, warm_s, warm_cpu = timed_run(manifest, tmp / "cache", profile.name, args.workers)
    n = len(cold)
    peak_mb = {who: resource.getrusage(code).ru_maxrss / 1024 for who, code in
               (("self", resource.RUSAGE_SELF), ("largest_child", resource.RUSAGE_CHILDREN))}
    cpu_per_patient = cold_cpu / n
    result = {
        "profile": profile.name, "workers": args.workers, "manifest": str(manifest),
        "params": PreprocessParams.from_profile(profile).to_dict(),
        "cold_s": cold_s, "cold_patients_per_min": n / cold_s * 60,
        "warm_s": warm_s, "warm_patients_per_min": n / warm_s * 60,
        "warm_fraction_of_cold": warm_s / cold_s,
        "warm_all_cached": bool(warm["cached"].all()),
        "cold_cpu_s_per_patient": cpu_per_patient,
        "warm_cpu_s_per_patient": warm_cpu / n,
        "cpu_bound_patients_per_min": 60 * args.workers / cpu_per_patient,
        "peak_rss_mb": peak_mb,
        "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "targets": {"cold_patients_per_min": TARGET_COLD_PER_MIN,
                    "warm_fraction_of_cold": TARGET_WARM_FRACTION},
        "meets_cold_target": n / cold_s * 60 >= TARGET_COLD_PER_MIN,
        "meets_warm_target": warm_s / cold_s < TARGET_WARM_FRACTION,
        **summary(cold),
    }
    print(f"{profile.name}: {n} patients, {args.workers} workers: cold {cold_s:.1f} s "
          f"({result['cold_patients_per_min']:.0f}/min; CPU {cpu_per_patient:.2f} s/patient "
          f"-> {result['cpu_bound_patients_per_min']:.0f}/min on idle cores), warm {warm_s:.1f} s "
          f"({100 * result['warm_fraction_of_cold']:.1f}% of cold); peak RSS "
          f"{peak_mb['self']:.0f} MB self, {peak_mb['largest_child']:.0f} MB largest worker; "
          f"{result['ok']}/{n} ok; load average before {load_before[0]:.1f}")
    write_result(f"bench_preprocess_{profile.name}", result)


if __name__ == "__main__":
    main()
