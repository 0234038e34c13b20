"""The data contract: ``data_manifest.csv`` schema, image reading and validation.

One row per image file. Paths are relative to the manifest's own folder. Validation
reports every problem at once, each naming the row, the patient and the file;
``python -m utils.manifest check PATH`` prints them and exits non-zero.
"""

from __future__ import annotations

import argparse
import gzip
import math
import os
import re
import zlib
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from .config import COHORTS, SEQUENCES, TIMEPOINTS
from .io import sha256_file, write_atomic

COLUMNS: dict[str, str] = {
    "patient_id": "pseudonymous patient identifier (no names, no hospital numbers)",
    "cohort": "training, internal_validation or external_validation",
    "centre": "acquiring centre or scanner label",
    "timepoint": "pre (before treatment) or post (after, before surgery)",
    "sequence": "T2W or DWI (high b-value)",
    "image_path": "image file (NIfTI, NRRD, MHA) or DICOM series folder, relative to the manifest",
    "mask_path": "that exam's tumour mask on the T2W grid, relative to the manifest",
    "pcr": "pathologic complete response: 1 yes, 0 no",
    "cea_pre": "CEA before treatment, ng/mL (may be empty)",
    "cea_post": "CEA after treatment, ng/mL (may be empty)",
    "ca199_pre": "CA19-9 before treatment, U/mL (may be empty)",
    "ca199_post": "CA19-9 after treatment, U/mL (may be empty)",
    "image_sha256": "sha256 of the image file (python -m utils.manifest hash fills it)",
    "mask_sha256": "sha256 of the mask file",
}
MARKERS = ("cea_pre", "cea_post", "ca199_pre", "ca199_post")
SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # patient ids name cache and output files
PATIENT_COLUMNS = ["patient_id", "cohort", "centre", "pcr", *MARKERS]
GEOMETRY_TOLERANCE = 1e-3  # relative, for spacing, origin (mm) and direction cosines


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a manifest, located as precisely as possible."""

    message: str
    row: int | None = None  # 1-based data row of the CSV (header excluded)
    patient_id: str | None = None
    file: str | None = None

    def __str__(self) -> str:
        where = [f"row {self.row}" if self.row else None,
                 f"patient {self.patient_id}" if self.patient_id else None,
                 f"file {self.file}" if self.file else None]
        located = ", ".join(w for w in where if w)
        return f"{located}: {self.message}" if located else self.message


class ManifestError(ValueError):
    """Raised when a manifest fails validation; carries every problem found."""

    def __init__(self, path: Path, problems: Sequence[Problem]):
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems[:50])
        more = f"\n  ... and {len(self.problems) - 50} more" if len(self.problems) > 50 else ""
        super().__init__(f"{path}: {len(self.problems)} problem(s)\n{lines}{more}")


# ---------------------------------------------------------------- reading


def strip_metadata(image: sitk.Image) -> sitk.Image:
    """Drop every header field (DICOM names, dates, IDs); keep pixels and geometry."""
    for key in image.GetMetaDataKeys():
        image.EraseMetaData(key)
    return image


def read_image(path: str | os.PathLike) -> sitk.Image:
    """Read NIfTI/NRRD/MHA, or a DICOM series folder, with geometry and no identifiers."""
    path = Path(path)
    if path.is_dir():
        reader = sitk.ImageSeriesReader()
        series = reader.GetGDCMSeriesIDs(str(path))
        if not series:
            raise ValueError(f"{path}: folder holds no DICOM series")
        if len(series) > 1:
            raise ValueError(f"{path}: folder holds {len(series)} DICOM series; keep one")
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(path), series[0]))
        image = reader.Execute()
    else:
        image = sitk.ReadImage(str(path))
    return strip_metadata(image)


def load_manifest(path: str | os.PathLike) -> pd.DataFrame:
    """Read a manifest and add absolute ``image_file`` and ``mask_file`` columns."""
    path = Path(path).resolve()
    table = pd.read_csv(path, dtype={"patient_id": str, "centre": str})
    base = path.parent
    table["image_file"] = [str(base / p) for p in table["image_path"]]
    table["mask_file"] = [str(base / p) for p in table["mask_path"]]
    return table


def patient_table(manifest: pd.DataFrame) -> pd.DataFrame:
    """One row per patient: id, cohort, centre, pCR and blood markers."""
    return (manifest[PATIENT_COLUMNS].drop_duplicates("patient_id")
            .sort_values(["cohort", "patient_id"], key=_cohort_order).reset_index(drop=True))


def _cohort_order(column: pd.Series) -> pd.Series:
    return column.map({c: i for i, c in enumerate(COHORTS)}) if column.name == "cohort" else column


def exam_files(manifest: pd.DataFrame, patient_id: str) -> dict[str, dict[str, str]]:
    """``{timepoint: {sequence: file, ..., "mask": file}}`` for one patient."""
    rows = manifest[manifest["patient_id"] == patient_id]
    exams: dict[str, dict[str, str]] = {}
    for _, row in rows.iterrows():
        exam = exams.setdefault(row["timepoint"], {})
        exam[row["sequence"]] = row["image_file"]
        exam["mask"] = row["mask_file"]
    return exams


# ---------------------------------------------------------------- validation


def validate_manifest(path: str | os.PathLike, check_files: bool = True,
                      workers: int | None = None) -> list[Problem]:
    """Every problem with the manifest at ``path`` (an empty list means valid)."""
    path = Path(path)
    if not path.exists():
        return [Problem("manifest file does not exist", file=str(path))]
    try:
        table = pd.read_csv(path, dtype={"patient_id": str, "centre": str})
    except Exception as error:
        return [Problem(f"cannot parse CSV: {error}", file=str(path))]
    problems = check_columns(table)
    if problems:
        return problems
    problems += check_values(table) + check_design(table)
    if check_files:
        problems += check_all_files(load_manifest(path), workers)
    return problems


def check_columns(table: pd.DataFrame) -> list[Problem]:
    missing = [c for c in COLUMNS if c not in table.columns]
    unknown = [c for c in table.columns if c not in COLUMNS]
    problems = [Problem(f"missing column {c!r}") for c in missing]
    problems += [Problem(f"unknown column {c!r} (expected only {list(COLUMNS)})") for c in unknown]
    return problems


def check_values(table: pd.DataFrame) -> list[Problem]:
    allowed = {"cohort": COHORTS, "timepoint": TIMEPOINTS, "sequence": SEQUENCES}
    problems = []
    for i, row in table.iterrows():
        where = {"row": i + 1, "patient_id": _text(row["patient_id"])}
        if not _text(row["patient_id"]):
            problems.append(Problem("empty patient_id", row=i + 1))
        elif not SAFE_ID.fullmatch(str(row["patient_id"])):
            problems.append(Problem(
                f"patient_id {row['patient_id']!r} is not a safe file name (letters, digits, "
                "'.', '_' and '-', starting with a letter or digit): it names cache files",
                **where))
        for column, values in allowed.items():
            if row[column] not in values:
                message = f"{column} {row[column]!r} is not one of {values}"
                problems.append(Problem(message, **where))
        if _as_label(row["pcr"]) is None:
            problems.append(Problem(f"pcr {row['pcr']!r} is not 0 or 1", **where))
        for column in ("image_path", "mask_path", "image_sha256", "mask_sha256"):
            if not _text(row[column]):
                problems.append(Problem(f"empty {column}", **where))
        problems += [Problem(f"{m} {row[m]!r} is not an empty cell or a finite number >= 0",
                             **where) for m in MARKERS if not _marker_ok(row[m])]
    return problems


def check_design(table: pd.DataFrame) -> list[Problem]:
    """Duplicates, both time points and all sequences per patient, one cohort per patient."""
    problems = []
    keys = ["patient_id", "timepoint", "sequence"]
    for i in np.flatnonzero(table.duplicated(keys, keep="first").to_numpy()):
        row = table.iloc[i]
        problems.append(Problem(f"duplicate row for {row['timepoint']} {row['sequence']}",
                                row=int(i) + 1, patient_id=_text(row["patient_id"])))
    for patient_id, rows in table.groupby("patient_id", sort=False):
        problems += _patient_design(str(patient_id), rows)
    return problems + _colliding_ids(table)


def _colliding_ids(table: pd.DataFrame) -> list[Problem]:
    """Patient ids that differ only by case or surrounding spaces (one patient twice, e.g.
    once in training and once in validation)."""
    ids = pd.Series(table["patient_id"].dropna().astype(str).unique())
    problems = []
    for _, group in ids.groupby(ids.str.strip().str.casefold()):
        if len(group) > 1:
            names = sorted(group)
            rows = [int(i) + 1 for i in np.flatnonzero(table["patient_id"].isin(names))]
            problems.append(Problem(f"patient ids {names} differ only by case or spaces: "
                                    f"one patient under two ids? (rows {rows[:6]})",
                                    patient_id=names[0]))
    return problems


def _patient_design(patient_id: str, rows: pd.DataFrame) -> list[Problem]:
    problems = []
    for column in ("cohort", "centre", "pcr", *MARKERS):
        values = rows[column].dropna().unique()
        if len(values) > 1:
            listed = sorted(map(str, values))
            problems.append(Problem(f"patient has several {column} values: {listed}",
                                    patient_id=patient_id))
    for timepoint in TIMEPOINTS:
        exam = rows[rows["timepoint"] == timepoint]
        if exam.empty:
            problems.append(Problem(f"no {timepoint}-treatment exam", patient_id=patient_id))
            continue
        for sequence in SEQUENCES:
            if sequence not in set(exam["sequence"]):
                problems.append(Problem(f"{timepoint} exam lacks a {sequence} image",
                                        patient_id=patient_id))
        if exam["mask_path"].nunique() > 1:
            problems.append(Problem(f"{timepoint} exam lists more than one mask",
                                    patient_id=patient_id))
    return problems


def check_all_files(manifest: pd.DataFrame, workers: int | None = None) -> list[Problem]:
    """File checks (existence, checksum, readability, geometry), one patient per task."""
    groups = [rows for _, rows in manifest.groupby("patient_id", sort=False)]
    workers = min(workers or os.cpu_count() or 1, max(len(groups), 1))
    if workers == 1:
        results: Iterable[list[Problem]] = map(check_patient_files, groups)
    else:
        pool = ProcessPoolExecutor(workers)
        results = pool.map(check_patient_files, groups, chunksize=4)
    problems = [p for result in results for p in result]
    if workers != 1:
        pool.shutdown()
    return problems


def check_patient_files(rows: pd.DataFrame) -> list[Problem]:
    problems: list[Problem] = []
    masks: dict[str, tuple[int, sitk.Image | None]] = {}
    for i, row in rows.iterrows():
        where = {"row": int(i) + 1, "patient_id": _text(row["patient_id"])}
        image, found = _check_file(row["image_file"], row["image_sha256"], where)
        problems += found
        if row["mask_file"] not in masks:
            mask, found = _check_file(row["mask_file"], row["mask_sha256"], where)
            problems += found + (_check_mask(mask, row["mask_file"], where) if mask else [])
            masks[row["mask_file"]] = (int(i) + 1, mask)
        mask = masks[row["mask_file"]][1]
        if row["sequence"] == "T2W" and image is not None and mask is not None:
            problems += _check_geometry(image, mask, row["mask_file"], where)
    return problems


def _check_file(file: str, expected_sha: object, where: dict) -> tuple[sitk.Image | None,
                                                                      list[Problem]]:
    path = Path(file)
    if not path.exists():
        return None, [Problem("file does not exist", file=file, **where)]
    if path.is_file() and _text(expected_sha) and sha256_file(path) != _text(expected_sha):
        return None, [Problem("sha256 does not match the manifest (file changed or corrupt)",
                              file=file, **where)]
    try:
        _require_complete_gzip(path)
        image = read_image(path)
    except Exception as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        return None, [Problem(f"unreadable or truncated image ({first_line[:160]})",
                              file=file, **where)]
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        return None, [Problem(f"image is not a scalar 3D volume (dimension "
                              f"{image.GetDimension()})", file=file, **where)]
    pixels = sitk.GetArrayViewFromImage(image)
    count = int(np.size(pixels) - np.count_nonzero(np.isfinite(pixels)))
    count = max(count, nifti_nonfinite_count(path))
    if count:
        return image, [Problem(f"{count} NaN or infinite voxel(s)", file=file, **where)]
    return image, []


NIFTI_FLOAT_TYPES = {16: "f4", 64: "f8"}


def nifti_nonfinite_count(path: Path) -> int:
    """NaN/inf voxels in a floating-point NIfTI-1 file, read from the raw bytes.

    ITK's NIfTI reader silently turns NaN into 0, so this reads the data block directly.
    """
    if not path.name.endswith((".nii", ".nii.gz")):
        return 0
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as handle:
        raw = handle.read()
    endian = "<" if np.frombuffer(raw[:4], "<i4")[0] == 348 else ">"
    datatype = int(np.frombuffer(raw[70:72], f"{endian}i2")[0])
    if datatype not in NIFTI_FLOAT_TYPES:
        return 0
    offset = int(np.frombuffer(raw[108:112], f"{endian}f4")[0])
    data = np.frombuffer(raw[offset:], f"{endian}{NIFTI_FLOAT_TYPES[datatype]}")
    return int(data.size - np.count_nonzero(np.isfinite(data)))


def _require_complete_gzip(path: Path, chunk: int = 1 << 20) -> None:
    """ITK reads a truncated ``.gz`` silently (zero-filling); check the stream's end marker."""
    if not path.name.endswith(".gz"):
        return
    stream = zlib.decompressobj(wbits=zlib.MAX_WBITS | 16)
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            stream.decompress(block)
    if not stream.eof:
        raise ValueError("gzip stream ends early (file truncated)")


def _check_mask(mask: sitk.Image, file: str, where: dict) -> list[Problem]:
    pixels = sitk.GetArrayViewFromImage(mask)
    if not np.any(pixels > 0):
        return [Problem("mask is empty (no tumour voxel)", file=file, **where)]
    return []


def _check_geometry(image: sitk.Image, mask: sitk.Image, file: str, where: dict) -> list[Problem]:
    checks = {
        "size": (image.GetSize(), mask.GetSize(), 0.0),
        "spacing": (image.GetSpacing(), mask.GetSpacing(), GEOMETRY_TOLERANCE),
        "origin": (image.GetOrigin(), mask.GetOrigin(), GEOMETRY_TOLERANCE),
        "direction": (image.GetDirection(), mask.GetDirection(), GEOMETRY_TOLERANCE),
    }
    problems = []
    for name, (expected, found, tol) in checks.items():
        if not np.allclose(expected, found, rtol=tol, atol=tol):
            problems.append(Problem(f"mask {name} {_fmt(found)} differs from the T2W image's "
                                    f"{_fmt(expected)}", file=file, **where))
    return problems


def _fmt(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:g}" for v in values) + ")"


def _text(value: object) -> str:
    return "" if value is None or (isinstance(value, float) and np.isnan(value)) else str(value)


def _as_label(value: object) -> int | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return int(number) if number in (0.0, 1.0) else None


def _marker_ok(value: object) -> bool:
    if _text(value) == "":
        return True
    try:
        number = float(value)
    except (TypeError, ValueError):
        return False
    return math.isfinite(number) and number >= 0


def require_valid(path: str | os.PathLike, check_files: bool = True) -> pd.DataFrame:
    """Validate, raise :class:`ManifestError` listing every problem, else load."""
    problems = validate_manifest(path, check_files=check_files)
    if problems:
        raise ManifestError(Path(path), problems)
    return load_manifest(path)


def fill_checksums(path: str | os.PathLike) -> Path:
    """Write the sha256 columns of a manifest in place (for users' own cohorts)."""
    path = Path(path)
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    base = path.parent
    for path_col, sha_col in (("image_path", "image_sha256"), ("mask_path", "mask_sha256")):
        table[sha_col] = [sha256_file(base / p) if (base / p).is_file() else ""
                          for p in table[path_col]]
    return write_atomic(path, lambda tmp: table.to_csv(tmp, index=False))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Check or hash a data manifest.")
    parser.add_argument("command", choices=["check", "hash", "schema"])
    parser.add_argument("path", nargs="?", default="data_manifest.csv")
    parser.add_argument("--no-files", action="store_true", help="check the table only")
    args = parser.parse_args(argv)
    if args.command == "schema":
        print("\n".join(f"{name:>13}  {text}" for name, text in COLUMNS.items()))
        return 0
    if args.command == "hash":
        print(f"wrote checksums into {fill_checksums(args.path)}")
        return 0
    problems = validate_manifest(args.path, check_files=not args.no_files)
    for problem in problems:
        print(problem)
    table = pd.read_csv(args.path) if not problems else None
    if problems:
        print(f"{args.path}: {len(problems)} problem(s)")
        return 1
    print(f"{args.path}: OK ({table['patient_id'].nunique()} patients, {len(table)} images)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
