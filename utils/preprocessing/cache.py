"""The preprocessing cache: one verified entry per patient, the parallel run and its CLI.

An entry in the cache folder (docs/CONTRACTS.md) is ``<patient>.npz`` (arrays and
``meta_json``, no pickle), ``<patient>_post_to_pre.tfm`` and the ``<patient>.json``
sidecar (the patient's QC row plus both files' sha256), written in that order, each
atomically; the sidecar comes last because it marks the patient as done. An entry is
reused only when the sidecar's key (parameters, pipeline version, input checksums) and
both checksums match; anything else is recomputed. :func:`load_cached` reads an entry,
:func:`write_cache_entry` writes one.

CLI: ``python -m utils.preprocessing.cache --manifest PATH --out DIR [--profile NAME] [--workers N]
[--registration {strict,flag,identity}]``; ``python -m utils.preprocess`` is the same.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import sys
import time
import traceback
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import SimpleITK as sitk

from utils.cohort.imagecheck import plain_itk_error
from utils.cohort.manifest import ManifestError, cohort_sequences, require_valid
from utils.config import (
    REFERENCE_SEQUENCE,
    Profile,
    as_profile,
    cache_files,
    get_paths,
    get_profile,
    processed_csv,
)
from utils.errors import InputError, PreprocessError
from utils.io import (
    checksum,
    save_npz_atomic,
    sha256_file,
    write_atomic,
    write_json_atomic,
    write_text_atomic,
)
from utils.preprocessing.pipeline import (
    PreprocessedPair,
    PreprocessParams,
    input_files,
    preprocess_patient,
)
from utils.preprocessing.registration import MODES as REGISTRATION_MODES
from utils.progress import progress_bar

CACHE_ARRAYS = ("image_pre", "image_post", "mask_pre", "mask_post", "spacing_zyx")
TABLE_COLUMNS = ["patient_id", "cohort", "centre", "status", "error_type", "error", "cached",
                 "seconds", "cache_file", "cache_key", "reg_metric_before", "reg_metric_after",
                 "reg_dice_before", "reg_dice_after", "reg_translation_mm", "reg_rotation_deg",
                 "reg_iterations", "reg_attempt", "reg_mode", "reg_kept_identity",
                 "reg_translation_from_init_mm", "reg_local_ncc_before", "reg_local_ncc_after",
                 "reg_flags", "roi_start_zyx", "tumour_extent_zyx", "padded",
                 "padding_zyx", "vol_pre_vox", "vol_post_vox", "sequences", "warnings",
                 "step_seconds"]


class CacheError(ValueError):
    """A damaged or unreadable cache file; the message names the patient and the file."""


# --------------------------------------------------------------------------- one entry
def cache_key(params: PreprocessParams, checksums: Mapping[str, str]) -> str:
    """Hash of the parameters, pipeline version and input files' SHA-256."""
    text = json.dumps({"params": params.digest(), "inputs": dict(sorted(checksums.items()))},
                      sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _cached_row(paths: Mapping[str, Path], key: str) -> dict[str, Any] | None:
    """The stored table row if the sidecar key matches and its outputs are intact."""
    try:
        row = json.loads(paths["sidecar"].read_text())
    except (OSError, ValueError):
        return None
    if row.get("cache_key") != key:
        return None
    if row.get("status") != "ok":
        return row
    intact = all(paths[kind].exists() and sha256_file(paths[kind]) == row.get(f"{kind}_sha256")
                 for kind in ("npz", "tfm"))
    return row if intact else None


def load_cached(path: str | os.PathLike) -> dict[str, Any]:
    """A cached patient: the arrays plus ``meta`` (parsed ``meta_json``); no pickle.

    A damaged file raises :class:`CacheError` naming the patient (the file's stem) and the
    file; ``run_preprocessing`` recomputes such an entry (its checksum no longer matches).
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            out = {name: data[name] for name in data.files}
        out["meta"] = json.loads(str(out.pop("meta_json")))
    except Exception as exc:  # BadZipFile, EOFError, zlib.error, KeyError, ValueError...
        raise CacheError(f"patient {path.stem}: cache file {path} is damaged or unreadable "
                         f"({type(exc).__name__}: {exc}); rerun preprocessing to recompute "
                         "it") from exc
    return out


def write_cache_entry(pair: PreprocessedPair, paths: Mapping[str, Path], row: dict[str, Any]
                      ) -> None:
    """npz, transform, then the sidecar (last: it is what marks the patient as done).

    Adds both files' checksums to ``row`` (the sidecar's content), so a damaged file is
    recomputed on reuse. The transform is also inside the npz's ``meta_json``; the ``.tfm``
    is for other ITK tools.
    """
    save_npz_atomic(paths["npz"], **pair.arrays())
    write_atomic(paths["tfm"], lambda tmp: sitk.WriteTransform(pair.transform, str(tmp)))
    row.update(npz_sha256=sha256_file(paths["npz"]), tfm_sha256=sha256_file(paths["tfm"]))
    write_json_atomic(paths["sidecar"], row)


def _qc_row(pair: PreprocessedPair) -> dict[str, Any]:
    """The QC columns of the processed table for one preprocessed patient."""
    reg, roi = pair.meta["registration"], pair.meta["roi"]
    return {"reg_metric_before": reg["metric_before"], "reg_metric_after": reg["metric_after"],
            "reg_dice_before": reg.get("dice_before"), "reg_dice_after": reg.get("dice_after"),
            "reg_translation_mm": reg["translation_mm"], "reg_rotation_deg": reg["rotation_deg"],
            "reg_iterations": reg["iterations"], "reg_attempt": reg["attempt"],
            "reg_mode": reg["mode"], "reg_kept_identity": reg.get("kept_identity"),
            "reg_translation_from_init_mm": reg.get("translation_from_init_mm"),
            "reg_local_ncc_before": reg.get("local_ncc_before"),
            "reg_local_ncc_after": reg.get("local_ncc_after"),
            "reg_flags": "; ".join(reg["flags"]),
            "roi_start_zyx": json.dumps(roi["start_zyx"]),
            "tumour_extent_zyx": json.dumps(roi.get("tumour_extent_zyx")),
            "padded": roi["padded"], "padding_zyx": json.dumps(roi["padding_zyx"]),
            "vol_pre_vox": int(pair.mask_pre.sum()), "vol_post_vox": int(pair.mask_post.sum()),
            "sequences": " ".join(pair.meta["sequences"]),
            "warnings": "; ".join(pair.meta["warnings"])}


# --------------------------------------------------------------------------- one patient
def check_cache(patient_rows: pd.DataFrame, params: PreprocessParams,
                out_dir: str | os.PathLike) -> tuple[dict[str, Any], str | None]:
    """Hash one patient's inputs and look its cache entry up.

    Returns ``(row, key)``: ``key`` is None when ``row`` is already final (a verified cache
    entry, ``cached=True``, or missing inputs, ``status="error"``); otherwise ``row`` is
    the start of the row that :func:`compute_to_cache` completes.
    """
    t0 = time.perf_counter()
    first = patient_rows.iloc[0]
    patient_id = str(first["patient_id"])
    row: dict[str, Any] = {"patient_id": patient_id,
                           "cohort": first.get("cohort"), "centre": first.get("centre")}
    try:
        files = input_files(patient_rows)
        missing = [p for p in files.values() if not Path(str(p)).exists()]
        if missing:
            raise InputError(patient_id, f"missing input file(s): {', '.join(map(str, missing))}")
        key = cache_key(params, {role: checksum(p) for role, p in files.items()})
    except PreprocessError as exc:
        return {**row, "status": "error", "error_type": type(exc).__name__, "error": str(exc),
                "cached": False, "seconds": time.perf_counter() - t0}, None
    cached = _cached_row(cache_files(out_dir, patient_id), key)
    if cached is not None:
        return {**cached, "cached": True, "seconds": time.perf_counter() - t0}, None
    return {**row, "cache_key": key}, key


def compute_to_cache(patient_rows: pd.DataFrame, params: PreprocessParams,
                     out_dir: str | os.PathLike, row: dict[str, Any], threads: int = 1
                     ) -> dict[str, Any]:
    """Preprocess one patient and write its cache entry; returns the completed table row.

    Errors are reported in the row (``status="error"``), not raised. Known preprocessing
    errors are cached too (same inputs and parameters give the same failure); unexpected
    ones are not, so a re-run retries them.
    """
    t0 = time.perf_counter()
    row = dict(row)
    patient_id = row["patient_id"]
    paths = cache_files(out_dir, patient_id)
    try:
        pair = preprocess_patient(patient_rows, params, threads=threads)
        pair.meta["cache_key"] = row["cache_key"]
        row.update(status="ok", error_type="", error="", cache_file=paths["npz"].name,
                   **_qc_row(pair))
        write_cache_entry(pair, paths, row)
        row["step_seconds"] = json.dumps(pair.timing_s)
    except PreprocessError as exc:
        row.update(status="error", error_type=type(exc).__name__, error=str(exc))
        write_json_atomic(paths["sidecar"], row)
    except Exception as exc:  # report, never drop, a patient
        detail = (plain_itk_error(exc) if "ITK" in str(exc) or "itk::" in str(exc)
                  else traceback.format_exception_only(type(exc), exc)[-1].strip())
        row.update(status="error", error_type=type(exc).__name__,
                   error=f"patient {patient_id}: unexpected {detail}")
    return {**row, "cached": False, "seconds": time.perf_counter() - t0}


# --------------------------------------------------------------------------- a whole cohort
def _remove_stale_temporaries(out_dir: Path) -> None:
    """Delete temporary files left by an interrupted run (``.<name>.<random>.<ext>``).

    Assumes one run at a time per cache folder (a concurrent run's temporaries would go).
    """
    for pattern in (".*.npz", ".*.json", ".*.tfm", ".processed.*.csv"):
        for tmp in out_dir.glob(pattern):
            tmp.unlink(missing_ok=True)


def _init_worker(threads: int) -> None:
    """Worker start-up: the number of ITK threads per worker process."""
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)


def _run_all(groups: list[pd.DataFrame], params: PreprocessParams, out_dir: Path,
             workers: int, progress: bool) -> list[dict[str, Any]]:
    """Cache look-ups here (cheap), then the patients still to do on ``workers`` processes."""
    bar = progress_bar(len(groups), "preprocess", enabled=progress, unit="patient")
    rows, todo = [], []
    for group in groups:
        row, key = check_cache(group, params, out_dir)
        if key is None:
            rows.append(row)
            bar.update()
        else:
            todo.append((group, row))
    workers = max(1, min(workers, len(todo)))
    if workers == 1:
        for group, row in todo:
            rows.append(compute_to_cache(group, params, out_dir, row))
            bar.update()
    elif todo:
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn"),
                                 initializer=_init_worker, initargs=(1,)) as pool:
            futures = [pool.submit(compute_to_cache, g, params, out_dir, r) for g, r in todo]
            for future in as_completed(futures):
                rows.append(future.result())
                bar.update()
    bar.close()
    return rows


def run_preprocessing(manifest_path: str | os.PathLike, out_dir: str | os.PathLike | None = None,
                      profile: Profile | str | None = None, workers: int | None = None,
                      params: PreprocessParams | None = None, progress: bool = True
                      ) -> pd.DataFrame:
    """Preprocess every patient of a manifest into ``out_dir`` (default: the profile cache).

    The manifest is validated first (table and files, :func:`utils.cohort.manifest.require_valid`):
    any problem raises :class:`~utils.cohort.manifest.ManifestError` listing them all, before
    anything is written. The sequences are the manifest's (reference first). Patients run
    in parallel (``workers`` processes, default all cores, one ITK thread each). Writes
    and returns ``processed.csv``: one row per patient with QC status, registration
    metrics, geometry warnings, padding and any error; failures are printed, never dropped.
    """
    prof = as_profile(profile)
    params = params or PreprocessParams.from_profile(prof)
    workers = workers or os.cpu_count() or 1
    df = require_valid(manifest_path, reference=params.reference_sequence, workers=workers)
    params = dataclasses.replace(params, sequences=cohort_sequences(
        df, params.reference_sequence))
    out = Path(out_dir) if out_dir is not None else get_paths(prof.name).cache_dir
    out.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(out)
    groups = [g for _, g in df.groupby("patient_id", sort=True)]
    rows = _run_all(groups, params, out, workers, progress)
    table = pd.DataFrame(rows).reindex(columns=TABLE_COLUMNS)
    table = table.sort_values("patient_id").reset_index(drop=True)
    write_text_atomic(processed_csv(out), table.to_csv(index=False))
    _report_failures(table)
    return table


def _report_failures(table: pd.DataFrame) -> None:
    """Print how many patients succeeded, and each failure on stderr."""
    failed = table[table["status"] != "ok"]
    ok = len(table) - len(failed)
    print(f"preprocessed {ok}/{len(table)} patients "
          f"({int(table['cached'].fillna(False).sum())} from cache)")
    for _, row in failed.iterrows():
        print(f"  FAILED {row['patient_id']}: {row['error']}", file=sys.stderr)


# --------------------------------------------------------------------------- command line
def main(argv: Sequence[str] | None = None) -> int:
    """``python -m utils.preprocess`` (or ``utils.preprocessing.cache``); 0 when every patient is ok."""
    parser = argparse.ArgumentParser(
        description="Preprocess every patient of a manifest into the cache.")
    parser.add_argument("--manifest", type=Path, default=None,
                        help="manifest CSV (default: the profile's manifest)")
    parser.add_argument("--out", type=Path, default=None, help="cache folder")
    parser.add_argument("--profile", default=None, help="smoke | demo | paper")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--registration", choices=REGISTRATION_MODES, default="strict",
                        help="strict: a registration failing QC is an error; flag: record "
                        "the QC flags and continue; identity: do not register")
    add_params_arguments(parser)
    args = parser.parse_args(argv)
    prof = get_profile(args.profile)
    manifest = args.manifest or get_paths(prof.name).manifest
    try:
        params = params_from_arguments(args, PreprocessParams.from_profile(
            prof, registration=args.registration))
        table = run_preprocessing(manifest, args.out, prof, args.workers, params=params,
                                  progress=not args.no_progress)
    except (ManifestError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0 if (table["status"] == "ok").all() else 1


def _triple(text: str, kind: type) -> tuple:
    """``"4,2,2"`` or ``"4x2x2"`` (z, y, x) as three values of ``kind``."""
    parts = text.replace("x", ",").split(",")
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"expected three values z,y,x, not {text!r}")
    return tuple(kind(p) for p in parts)


def add_params_arguments(parser: argparse.ArgumentParser) -> None:
    """The geometry and sequence options shared by the preprocessing and prediction CLIs."""
    parser.add_argument("--spacing", type=lambda t: _triple(t, float), default=None,
                        metavar="Z,Y,X", help="target voxel spacing in mm (default: profile)")
    parser.add_argument("--roi", default=None, metavar="Z,Y,X[mm]",
                        help="ROI size in voxels (16,40,40) or millimetres (80,80,80mm), "
                        "default: profile")
    parser.add_argument("--reference-sequence", default=None,
                        help=f"sequence whose grid the masks follow (default "
                        f"{REFERENCE_SEQUENCE})")


def roi_voxels(roi: str, spacing_zyx: Sequence[float]) -> tuple[int, int, int]:
    """``"16,40,40"`` voxels, or ``"80,80,80mm"`` converted at ``spacing_zyx`` (rounded up)."""
    if roi.strip().lower().endswith("mm"):
        mm = _triple(roi.strip()[:-2], float)
        return tuple(math.ceil(m / s - 1e-6) for m, s in zip(mm, spacing_zyx,
                                                                    strict=True))
    return _triple(roi, int)


def params_from_arguments(args: argparse.Namespace, base: PreprocessParams
                          ) -> PreprocessParams:
    """``base`` with the CLI's ``--spacing``, ``--roi`` and ``--reference-sequence``."""
    changes: dict[str, Any] = {}
    if args.spacing is not None:
        changes["spacing_zyx"] = args.spacing
    spacing = changes.get("spacing_zyx", base.spacing_zyx)
    if args.roi is not None:
        changes["roi_zyx"] = roi_voxels(args.roi, spacing)
    if args.reference_sequence:
        changes["reference_sequence"] = args.reference_sequence
        if args.reference_sequence not in base.sequences:
            changes["sequences"] = (args.reference_sequence, *base.sequences)
    return dataclasses.replace(base, **changes)


if __name__ == "__main__":
    raise SystemExit(main())
