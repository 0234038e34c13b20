"""Synthetic longitudinal pelvic MRI: the embedded phantom cohort, written to files.

The paper's clinical data are private. This module writes a cohort of phantom patients
(:mod:`utils.cohort.phantom`: anatomy, response biology, acquisition) with the paper's study
design (a training cohort and an internal validation cohort from centre A, an external
validation cohort from centres B and C), so that every stage of the pipeline does real
work. Numbers measured on it are *not* the paper's. The true probabilities go to
``oracle.csv``, which training never reads.

Generation is bit-stable: per-patient random streams (``derive_seed``), float64
arithmetic, integer output, and SimpleITK's bundled zlib, so the checksums in the
committed manifest verify on a fresh machine with the pinned versions.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import SimpleITK as sitk

from utils.cohort.phantom import CENTRES, COHORT_PREFIX, acquire, draw_patient
from utils.config import COHORTS, ROOT, Profile, as_profile, get_profile
from utils.io import sha256_file, write_atomic
from utils.parallel import map_processes
from utils.progress import progress_bar

# ---------------------------------------------------------------- cohort files

MANIFEST_COLUMNS = [
    "patient_id", "cohort", "centre", "timepoint", "sequence", "image_path", "mask_path", "pcr",
    "cea_pre", "cea_post", "ca199_pre", "ca199_post", "image_sha256", "mask_sha256",
]


def cohort_plan(profile: Profile) -> list[tuple[str, str, str]]:
    """(patient_id, cohort, centre) for every patient of the profile."""
    sizes = dict(zip(COHORTS, (profile.n_training, profile.n_internal, profile.n_external),
                     strict=True))
    plan = []
    for cohort, size in sizes.items():
        for i in range(size):
            centre = "A" if cohort != "external_validation" else ("B" if i % 2 == 0 else "C")
            plan.append((f"{COHORT_PREFIX[cohort]}{i + 1:03d}", cohort, centre))
    return plan


def write_image(image: sitk.Image, target: Path) -> None:
    write_atomic(target, lambda tmp: sitk.WriteImage(image, str(tmp), useCompression=True))


def generate_patient(profile: Profile, patient_id: str, cohort: str, centre: str,
                     out_dir: Path) -> list[dict]:
    """Write one patient's four images and two masks; return its manifest rows."""
    draw = draw_patient(profile, patient_id, cohort, centre)
    folder = out_dir / patient_id
    rows = []
    for timepoint in ("pre", "post"):
        mask_path = folder / f"{timepoint}_mask.nii.gz"
        for sequence in ("T2W", "DWI"):
            image_path = folder / f"{timepoint}_{sequence}.nii.gz"
            acq = CENTRES[centre][sequence].scaled(profile.phantom_resolution)
            image, mask = acquire(draw, timepoint, sequence, acq)
            write_image(image, image_path)
            if sequence == "T2W":
                write_image(mask, mask_path)
            rows.append({
                "patient_id": patient_id, "cohort": cohort, "centre": centre,
                "timepoint": timepoint, "sequence": sequence,
                "image_path": image_path, "mask_path": mask_path, "pcr": draw.pcr,
                **draw.markers,
            })
    return rows


def oracle_row(profile: Profile, patient_id: str, cohort: str, centre: str) -> dict:
    draw = draw_patient(profile, patient_id, cohort, centre)
    return {"patient_id": patient_id, "cohort": cohort, "centre": centre, "pcr": draw.pcr,
            "p_true": round(draw.p_true, 6), "z_img": round(draw.z_img, 6),
            "z_mark": round(draw.z_mark, 6),
            "volume_ratio": round(draw.anatomy.shrink ** 3, 6),
            "viable_fraction": round(draw.anatomy.viable_fraction, 6)}


def _generate_one(args: tuple) -> list[dict]:
    profile, patient_id, cohort, centre, out_dir = args
    return generate_patient(profile, patient_id, cohort, centre, out_dir)


def generate_cohort(profile: str | Profile, out_dir: str | Path, workers: int | None = None,
                    manifest_path: str | Path | None = None, progress: bool = True) -> Path:
    """Generate (or verify and keep) the profile's phantom cohort; return the manifest path.

    Files that already exist and match the manifest's checksums are kept; anything else
    is regenerated. If an existing manifest lists a regenerated patient, the new files must
    reproduce its checksums bit for bit, else :class:`NotBitStableError` names them and the
    manifest is left untouched. Paths in the manifest are relative to its own folder.
    """
    profile = as_profile(profile)
    out_dir = Path(out_dir).resolve()
    manifest_path = Path(manifest_path or out_dir / "manifest.csv").resolve()
    plan = cohort_plan(profile)
    todo = [p for p in plan if not _patient_verified(p[0], out_dir, manifest_path)]
    rows = _run_parallel([(profile, *p, out_dir) for p in todo], workers, progress)
    kept = _kept_rows(manifest_path, {p[0] for p in plan} - {p[0] for p in todo})
    manifest = _manifest_frame(rows, kept, manifest_path, [p[0] for p in plan])
    _check_bit_stable(manifest, manifest_path)
    write_atomic(manifest_path, lambda tmp: manifest.to_csv(tmp, index=False))
    oracle = pd.DataFrame([oracle_row(profile, *p) for p in plan])
    write_atomic(out_dir / "oracle.csv", lambda tmp: oracle.to_csv(tmp, index=False))
    return manifest_path


class NotBitStableError(RuntimeError):
    """Regenerated phantom files differ from the checksums an existing manifest records."""


def _check_bit_stable(manifest: pd.DataFrame, manifest_path: Path) -> None:
    if not manifest_path.exists():
        return
    previous = pd.read_csv(manifest_path)
    if set(previous.columns) != set(MANIFEST_COLUMNS):
        return
    merged = manifest.merge(previous, on=["patient_id", "timepoint", "sequence"],
                            suffixes=("", "_recorded"))
    differs = merged[(merged["image_sha256"] != merged["image_sha256_recorded"])
                     | (merged["mask_sha256"] != merged["mask_sha256_recorded"])]
    if len(differs):
        files = ", ".join(differs["image_path"].head(5))
        raise NotBitStableError(
            f"{len(differs)} regenerated file(s) differ from the checksums in {manifest_path} "
            f"(e.g. {files}); the phantom is not bit-stable on this machine with these "
            "package versions. Install the pinned versions (make setup) or regenerate the "
            "manifest deliberately by deleting it.")


def _run_parallel(jobs: list[tuple], workers: int | None, progress: bool) -> list[dict]:
    """The manifest rows of every job, in job order (patients on ``workers`` processes)."""
    if not jobs:
        return []
    bar = progress_bar(len(jobs), "phantom patients", enabled=progress)
    results = map_processes(_generate_one, jobs, workers, chunksize=2,
                            on_result=lambda _: bar.update())
    bar.close()
    return [row for result in results for row in result]


def _patient_verified(patient_id: str, out_dir: Path, manifest_path: Path) -> bool:
    """True if the manifest lists this patient and all its files exist and verify."""
    if not manifest_path.exists():
        return False
    table = pd.read_csv(manifest_path)
    rows = table[table["patient_id"] == patient_id]
    if len(rows) != 4:
        return False
    base = manifest_path.parent
    for _, row in rows.iterrows():
        for path_col, sha_col in (("image_path", "image_sha256"), ("mask_path", "mask_sha256")):
            path = base / row[path_col]
            if not path.exists() or sha256_file(path) != row[sha_col]:
                return False
    return True


def _kept_rows(manifest_path: Path, patient_ids: set[str]) -> pd.DataFrame:
    if not patient_ids:
        return pd.DataFrame(columns=MANIFEST_COLUMNS)
    table = pd.read_csv(manifest_path)
    return table[table["patient_id"].isin(patient_ids)]


def _manifest_frame(new_rows: list[dict], kept: pd.DataFrame, manifest_path: Path,
                    order: Sequence[str]) -> pd.DataFrame:
    base = manifest_path.parent
    new = pd.DataFrame(new_rows)
    if len(new):
        new["image_sha256"] = [sha256_file(p) for p in new["image_path"]]
        new["mask_sha256"] = [sha256_file(p) for p in new["mask_path"]]
        for col in ("image_path", "mask_path"):
            new[col] = [os.path.relpath(p, base) for p in new[col]]
    frames = [f for f in (kept, new) if len(f)]
    table = pd.concat(frames, ignore_index=True)[MANIFEST_COLUMNS]
    rank = {pid: i for i, pid in enumerate(order)}
    key = table["patient_id"].map(rank) * 10 + table["timepoint"].map({"pre": 0, "post": 1}) * 2
    key += table["sequence"].map({"T2W": 0, "DWI": 1})
    return table.assign(_key=key).sort_values("_key").drop(columns="_key").reset_index(drop=True)


def default_out_dir(profile_name: str) -> Path:
    return ROOT / "data" / "phantom" / profile_name


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Generate the synthetic phantom cohort.")
    parser.add_argument("--profile", default=None, help="smoke, demo or paper")
    parser.add_argument("--out", default=None, help="output folder (default data/phantom/NAME)")
    parser.add_argument("--manifest", default=None, help="manifest path (default OUT/manifest.csv)")
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args(argv)
    profile = get_profile(args.profile)
    out = Path(args.out) if args.out else default_out_dir(profile.name)
    path = generate_cohort(profile.name, out, args.workers, args.manifest)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
