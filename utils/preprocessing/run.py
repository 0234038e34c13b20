"""Fill the preprocessing cache for a whole cohort: :func:`run_preprocessing`.

Per patient: hash the inputs and reuse a verified entry (:mod:`utils.preprocessing.cache`),
or preprocess (:func:`utils.preprocessing.pipeline.preprocess_patient`) and write the
entry. Patients run on a process pool (:func:`utils.parallel.map_processes`, spawn context,
one ITK thread per worker). Writes ``processed.csv``, one QC row per patient.

What a failed patient leaves (the others are cached as usual): its ``processed.csv`` row
with ``status="error"`` and the cause, never arrays or a transform. A known preprocessing
error (:class:`~utils.errors.PreprocessError`, e.g. registration QC or an ROI that does
not fit) also leaves the ``<patient>.json`` sidecar holding that row, so a re-run with the
same inputs and parameters reports it without recomputing; an unexpected error leaves
nothing (a re-run retries). A write that fails half-way removes the entry's arrays and
transform; temporary files are renamed into place or removed (:mod:`utils.io`), and those
of a killed run are deleted at the start of the next.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import SimpleITK as sitk

from utils.cohort.imageerrors import plain_itk_error
from utils.cohort.manifest import cohort_sequences
from utils.cohort.validate import require_valid
from utils.config import (
    Profile,
    as_profile,
    cache_files,
    get_paths,
    processed_csv,
    with_overrides,
)
from utils.errors import InputError, PreprocessError
from utils.io import checksum, write_json_atomic, write_text_atomic
from utils.parallel import map_processes
from utils.preprocessing.cache import cache_key, cached_row, write_cache_entry
from utils.preprocessing.params import PreprocessedPair, PreprocessParams, RoiPlacement
from utils.preprocessing.pipeline import input_files, preprocess_patient
from utils.progress import progress_bar

TABLE_COLUMNS = ["patient_id", "cohort", "centre", "status", "error_type", "error", "cached",
                 "seconds", "cache_file", "cache_key", "reg_metric_before", "reg_metric_after",
                 "reg_dice_before", "reg_dice_after", "reg_translation_mm", "reg_rotation_deg",
                 "reg_iterations", "reg_attempt", "reg_mode", "reg_kept_identity",
                 "reg_translation_from_init_mm", "reg_local_ncc_before", "reg_local_ncc_after",
                 "reg_flags", "roi_source", "roi_start_zyx", "tumour_extent_zyx",
                 "roi_centre_error_mm", "roi_tumour_inside_pre", "roi_whole_tumour", "padded",
                 "padding_zyx", "vol_pre_vox", "vol_post_vox", "sequences", "warnings",
                 "step_seconds"]


def _qc_row(pair: PreprocessedPair) -> dict[str, Any]:
    """The QC columns of the processed table for one preprocessed patient."""
    reg, roi = pair.meta["registration"], pair.meta["roi"]
    scoring = roi.get("scoring", {})
    return {"reg_metric_before": reg["metric_before"], "reg_metric_after": reg["metric_after"],
            "reg_dice_before": reg.get("dice_before"), "reg_dice_after": reg.get("dice_after"),
            "reg_translation_mm": reg["translation_mm"], "reg_rotation_deg": reg["rotation_deg"],
            "reg_iterations": reg["iterations"], "reg_attempt": reg["attempt"],
            "reg_mode": reg["mode"], "reg_kept_identity": reg.get("kept_identity"),
            "reg_translation_from_init_mm": reg.get("translation_from_init_mm"),
            "reg_local_ncc_before": reg.get("local_ncc_before"),
            "reg_local_ncc_after": reg.get("local_ncc_after"),
            "reg_flags": "; ".join(reg["flags"]),
            "roi_source": roi["source"], "roi_start_zyx": json.dumps(roi["start_zyx"]),
            "roi_centre_error_mm": scoring.get("centre_error_mm"),
            "roi_tumour_inside_pre": scoring.get("tumour_inside_pre"),
            "roi_whole_tumour": scoring.get("whole_tumour_inside"),
            "tumour_extent_zyx": json.dumps(roi.get("tumour_extent_zyx")),
            "padded": roi["padded"], "padding_zyx": json.dumps(roi["padding_zyx"]),
            "vol_pre_vox": int(pair.mask_pre.sum()), "vol_post_vox": int(pair.mask_post.sum()),
            "sequences": " ".join(pair.meta["sequences"]),
            "warnings": "; ".join(pair.meta["warnings"])}


# --------------------------------------------------------------------------- one patient
def check_cache(patient_rows: pd.DataFrame, params: PreprocessParams,
                out_dir: str | os.PathLike, placement: RoiPlacement | None = None
                ) -> tuple[dict[str, Any], str | None]:
    """Hash one patient's inputs (and the ROI centre, if given) and look its entry up.

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
        inputs = {role: checksum(p) for role, p in files.items()}
        if placement is not None:
            inputs["roi_placement"] = placement.key()
        key = cache_key(params, inputs)
    except PreprocessError as exc:
        return {**row, "status": "error", "error_type": type(exc).__name__, "error": str(exc),
                "cached": False, "seconds": time.perf_counter() - t0}, None
    cached = cached_row(cache_files(out_dir, patient_id), key)
    if cached is not None:
        return {**cached, "cached": True, "seconds": time.perf_counter() - t0}, None
    return {**row, "cache_key": key}, key


def compute_to_cache(patient_rows: pd.DataFrame, params: PreprocessParams,
                     out_dir: str | os.PathLike, row: dict[str, Any], threads: int = 1,
                     placement: RoiPlacement | None = None) -> dict[str, Any]:
    """Preprocess one patient (ROI from ``placement`` if given, else on its tumour mask)
    and write its cache entry; returns the completed table row.

    Errors are reported in the row (``status="error"``), not raised. Known preprocessing
    errors are cached too (same inputs and parameters give the same failure); unexpected
    ones are not, so a re-run retries them.
    """
    t0 = time.perf_counter()
    row = dict(row)
    patient_id = row["patient_id"]
    paths = cache_files(out_dir, patient_id)
    try:
        hint = {} if placement is None else {"roi_center_mm": placement.center_mm,
                                             "roi_extent_mm": placement.extent_mm}
        pair = preprocess_patient(patient_rows, params, threads=threads, **hint)
        pair.meta["cache_key"] = row["cache_key"]
        row.update(status="ok", error_type="", error="", cache_file=paths["npz"].name,
                   **_qc_row(pair))
        _write_whole_entry(pair, paths, row)
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


def _write_whole_entry(pair: PreprocessedPair, paths: dict[str, Path], row: dict[str, Any]
                       ) -> None:
    """:func:`write_cache_entry`, or no entry at all: a failed write removes its files."""
    try:
        write_cache_entry(pair, paths, row)
    except BaseException:
        for kind in ("npz", "tfm", "sidecar"):
            paths[kind].unlink(missing_ok=True)
        raise


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


Job = tuple[pd.DataFrame, PreprocessParams, Path, dict[str, Any], RoiPlacement | None]


def _compute_job(job: Job) -> dict[str, Any]:
    """:func:`compute_to_cache` on one ``(rows, params, out_dir, row, placement)`` task."""
    group, params, out_dir, row, placement = job
    return compute_to_cache(group, params, out_dir, row, placement=placement)


def _run_all(groups: list[pd.DataFrame], params: PreprocessParams, out_dir: Path,
             workers: int, progress: bool, placements: Mapping[str, RoiPlacement]
             ) -> list[dict[str, Any]]:
    """Cache look-ups here (cheap), then the patients still to do on ``workers`` processes."""
    bar = progress_bar(len(groups), "preprocess", enabled=progress, unit="patient")
    rows, jobs = [], []
    for group in groups:
        placement = placements.get(str(group["patient_id"].iloc[0]))
        row, key = check_cache(group, params, out_dir, placement)
        if key is None:
            rows.append(row)
            bar.update()
        else:
            jobs.append((group, params, out_dir, row, placement))
    rows += map_processes(_compute_job, jobs, workers, ordered=False, spawn=True,
                          initializer=_init_worker, initargs=(1,),
                          on_result=lambda _: bar.update())
    bar.close()
    return rows


def run_preprocessing(manifest_path: str | os.PathLike, out_dir: str | os.PathLike | None = None,
                      profile: Profile | str | None = None, workers: int | None = None,
                      params: PreprocessParams | None = None, progress: bool = True,
                      placements: Mapping[str, RoiPlacement] | None = None) -> pd.DataFrame:
    """Preprocess every patient of a manifest into ``out_dir`` (default: the profile cache).

    The manifest is validated first (table and files, :func:`utils.cohort.validate.require_valid`):
    any problem raises :class:`~utils.cohort.manifest.ManifestError` listing them all, before
    anything is written. The sequences are the manifest's (reference first). A patient in
    ``placements`` (the localiser's, :func:`utils.localisation.run.roi_placements`) gets its
    ROI and registration QC box from there; its masks are cropped for scoring only. Patients run
    in parallel (``workers`` processes, default all cores, one ITK thread each). Writes
    and returns ``processed.csv``: one row per patient with QC status, registration
    metrics, geometry warnings, padding and any error; failures are printed, never dropped.
    """
    prof = as_profile(profile)
    params = params or PreprocessParams.from_profile(prof)
    workers = workers or os.cpu_count() or 1
    checked = with_overrides(prof, spacing_zyx=tuple(params.spacing_zyx),
                             roi_zyx=tuple(params.roi_zyx))  # the box and grid to be used
    df = require_valid(manifest_path, reference=params.reference_sequence, workers=workers,
                       profile=checked)
    params = dataclasses.replace(params, sequences=cohort_sequences(
        df, params.reference_sequence))
    unknown = sorted(set(placements or {}) - set(df["patient_id"].astype(str)))
    if unknown:
        raise ValueError(f"ROI placements for patients not in {manifest_path}: "
                         f"{', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''} "
                         "(a localisation table of another manifest?)")
    out = Path(out_dir) if out_dir is not None else get_paths(prof.name).cache_dir
    out.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(out)
    groups = [g for _, g in df.groupby("patient_id", sort=True)]
    rows = _run_all(groups, params, out, workers, progress, placements or {})
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
