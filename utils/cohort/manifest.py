"""The data contract: ``data_manifest.csv`` schema, image reading and validation.

One row per image file. Paths are relative to the manifest's own folder. Validation
reports every problem at once, each naming the row, the patient and the file;
``python -m utils.manifest check PATH`` prints them and exits non-zero.
"""

from __future__ import annotations

import argparse
import math
import os
import re
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from utils.cohort import filecheck, imagecheck
from utils.config import COHORTS, REFERENCE_SEQUENCE, SEQUENCE_NAME, TIMEPOINTS
from utils.geometry import sequences_outside_reference
from utils.io import checksum, write_atomic

COLUMNS: dict[str, str] = {
    "patient_id": "pseudonymous patient identifier (no names, no hospital numbers)",
    "cohort": "training, internal_validation or external_validation",
    "centre": "acquiring centre or scanner label",
    "timepoint": "pre (before treatment) or post (after, before surgery)",
    "sequence": "sequence name (letters, digits, '_', '-', '+'), e.g. T2W, DWI, ADC; every "
                "exam has the same set, one of them the reference grid (T2W by default)",
    "image_path": "image file (NIfTI, NRRD, MHA) or DICOM series folder, relative to the manifest",
    "mask_path": "that exam's tumour mask on the reference sequence's grid, relative to the "
                 "manifest; labels {0, 1} (or {0, 255})",
    "pcr": "pathologic complete response: 1 yes, 0 no",
    "cea_pre": "CEA before treatment, ng/mL (may be empty)",
    "cea_post": "CEA after treatment, ng/mL (may be empty)",
    "ca199_pre": "CA19-9 before treatment, U/mL (may be empty)",
    "ca199_post": "CA19-9 after treatment, U/mL (may be empty)",
    "image_sha256": "sha256 of the image file; for a DICOM folder, sha256 of its sorted "
                    "'<relative path>\\t<sha256>\\n' lines, one per file (utils.io.checksum; "
                    "python -m utils.manifest hash fills it)",
    "mask_sha256": "sha256 of the mask file",
}
MARKERS = ("cea_pre", "cea_post", "ca199_pre", "ca199_post")
SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # patient ids name cache and output files
PATIENT_COLUMNS = ["patient_id", "cohort", "centre", "pcr", *MARKERS]


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


def read_image(path: str | os.PathLike, max_voxels: int | None = None) -> sitk.Image:
    """Read NIfTI/NRRD/MHA, or a DICOM series folder, with geometry and no identifiers.

    Refuses (:class:`~utils.cohort.imagecheck.ImageFileError`, in plain words) a header declaring
    more than ``max_voxels`` (default ``$RPNET_MAX_VOXELS`` or 512**3) voxels, voxel data
    shorter than the header says, and a DICOM folder with no, several, or unevenly
    spaced series.
    """
    path = Path(path)
    if path.is_dir():
        return imagecheck.strip_metadata(imagecheck.read_dicom_series(path, max_voxels))
    imagecheck.inspect_file(path, max_voxels)
    return imagecheck.strip_metadata(imagecheck.read_file(path))


def load_manifest(path: str | os.PathLike) -> pd.DataFrame:
    """Read a manifest and add absolute ``image_file`` and ``mask_file`` columns."""
    path = Path(path).resolve()
    table = pd.read_csv(path, dtype={"patient_id": str, "centre": str})
    base = path.parent
    table["image_file"] = [str(base / p) if _text(p) else "" for p in table["image_path"]]
    table["mask_file"] = [str(base / p) if _text(p) else "" for p in table["mask_path"]]
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


def cohort_sequences(table: pd.DataFrame, reference: str = REFERENCE_SEQUENCE
                     ) -> tuple[str, ...]:
    """The cohort's sequences in channel order: the reference first, then the rest sorted.

    This order is the model's input channels; it does not depend on the manifest's row order.
    """
    names = set(table["sequence"].dropna().astype(str))
    if reference not in names:
        raise ValueError(f"reference sequence {reference!r} is not in the manifest's "
                         f"sequences {sorted(names)}")
    return (reference, *sorted(names - {reference}))


def validate_manifest(path: str | os.PathLike, check_files: bool = True,
                      workers: int | None = None, reference: str = REFERENCE_SEQUENCE
                      ) -> list[Problem]:
    """Every problem with the manifest at ``path`` (an empty list means valid).

    ``reference`` names the sequence whose grid the masks and the preprocessing follow.
    """
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
    problems += check_values(table) + check_design(table, reference)
    if check_files:
        problems += check_all_files(load_manifest(path), workers, reference)
    return problems


def check_columns(table: pd.DataFrame) -> list[Problem]:
    missing = [c for c in COLUMNS if c not in table.columns]
    unknown = [c for c in table.columns if c not in COLUMNS]
    problems = [Problem(f"missing column {c!r}") for c in missing]
    problems += [Problem(f"unknown column {c!r} (expected only {list(COLUMNS)})") for c in unknown]
    return problems


def check_values(table: pd.DataFrame) -> list[Problem]:
    allowed = {"cohort": COHORTS, "timepoint": TIMEPOINTS}
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
        if not SEQUENCE_NAME.fullmatch(_text(row["sequence"])):
            problems.append(Problem(f"sequence {row['sequence']!r} is not a name made of "
                                    "letters, digits, '_', '-' and '+'", **where))
        if _as_label(row["pcr"]) is None:
            problems.append(Problem(f"pcr {row['pcr']!r} is not 0 or 1", **where))
        problems += [Problem(f"empty {column}", **where) for column in
                     ("image_path", "mask_path", "image_sha256", "mask_sha256")
                     if not _text(row[column])]
        problems += [Problem(f"{m} {row[m]!r} is not an empty cell or a finite number >= 0",
                             **where) for m in MARKERS if not _marker_ok(row[m])]
    return problems


def check_design(table: pd.DataFrame, reference: str = REFERENCE_SEQUENCE) -> list[Problem]:
    """Duplicates, both time points per patient, one sequence set per cohort (with the
    reference), one cohort per patient."""
    problems = []
    keys = ["patient_id", "timepoint", "sequence"]
    for i in np.flatnonzero(table.duplicated(keys, keep="first").to_numpy()):
        row = table.iloc[i]
        problems.append(Problem(f"duplicate row for {row['timepoint']} {row['sequence']}",
                                row=int(i) + 1, patient_id=_text(row["patient_id"])))
    for patient_id, rows in table.groupby("patient_id", sort=False):
        problems += _patient_design(str(patient_id), rows)
    return problems + _colliding_ids(table) + _sequence_sets(table, reference)


def _sequence_sets(table: pd.DataFrame, reference: str) -> list[Problem]:
    """Every exam must hold the cohort's sequence set (the most common one), reference
    included; each exam that differs is named with what it lacks or adds."""
    exams = (table.dropna(subset=["patient_id", "timepoint", "sequence"])
             .groupby(["patient_id", "timepoint"], sort=False)["sequence"]
             .agg(lambda s: tuple(sorted(set(map(str, s))))))
    if exams.empty:
        return []
    expected = set(exams.value_counts().index[0])
    problems = []
    if reference not in expected:
        problems.append(Problem(f"the reference sequence {reference!r} is not among the "
                                f"cohort's sequences {sorted(expected)} (choose another "
                                "reference, e.g. --reference-sequence)"))
    for (patient_id, timepoint), found in exams.items():
        lacks, extra = sorted(expected - set(found)), sorted(set(found) - expected)
        if lacks or extra:
            detail = "; ".join(part for part in (f"lacks {lacks}" if lacks else "",
                                                 f"adds {extra}" if extra else "") if part)
            problems.append(Problem(f"{timepoint} exam's sequences {list(found)} differ from "
                                    f"the cohort's {sorted(expected)}: {detail}",
                                    patient_id=str(patient_id)))
    return problems


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
        if exam["mask_path"].nunique() > 1:
            problems.append(Problem(f"{timepoint} exam lists more than one mask",
                                    patient_id=patient_id))
    return problems


def check_all_files(manifest: pd.DataFrame, workers: int | None = None,
                    reference: str = REFERENCE_SEQUENCE) -> list[Problem]:
    """File checks (existence, checksum, readability, geometry), one patient per task."""
    groups = [rows for _, rows in manifest.groupby("patient_id", sort=False)]
    workers = min(workers or os.cpu_count() or 1, max(len(groups), 1))
    check = partial(check_patient_files, reference=reference)
    if workers == 1:
        results: Iterable[list[Problem]] = map(check, groups)
    else:
        pool = ProcessPoolExecutor(workers)
        results = pool.map(check, groups, chunksize=4)
    problems = [p for result in results for p in result]
    if workers != 1:
        pool.shutdown()
    return problems + duplicate_images(manifest)


def duplicate_images(manifest: pd.DataFrame) -> list[Problem]:
    """One scan listed twice: rows whose images have the same sha256 or the same path.

    Across patients, one patient's scan would sit in two cohorts (validation data leaking
    into training); within a patient, one file stands for two sequences or time points.
    Each repeat is reported on its own row, naming the first listing.
    """
    seen: dict[str, int] = {}
    problems = []
    for position, (sha, file) in enumerate(zip(manifest["image_sha256"],
                                               manifest["image_file"], strict=True)):
        keys = [k for k in (_text(sha), os.path.realpath(file) if file else "") if k]
        earlier = next((seen[k] for k in keys if k in seen), None)
        for key in keys:
            seen.setdefault(key, position)
        if earlier is not None:
            problems += _duplicate(manifest, earlier, position)
    return problems


def _duplicate(manifest: pd.DataFrame, earlier: int, position: int) -> list[Problem]:
    first, row = manifest.iloc[earlier], manifest.iloc[position]
    if all(first[c] == row[c] for c in ("patient_id", "timepoint", "sequence")):
        return []  # a duplicate row, reported by check_design
    listed = (f"{first['timepoint']} {first['sequence']} image {first['image_path']} "
              f"(row {int(manifest.index[earlier]) + 1})")
    if first["patient_id"] == row["patient_id"]:
        message = (f"same image (identical sha256) as this patient's {listed}: one file "
                   "listed under two sequences or time points")
    else:
        message = (f"same image (identical sha256) as patient {first['patient_id']}'s "
                   f"{listed}: one scan under two patients ({first['cohort']} and "
                   f"{row['cohort']}) leaks data between cohorts")
    return [Problem(message, row=int(manifest.index[position]) + 1,
                    patient_id=_text(row["patient_id"]), file=str(row["image_file"]))]


def check_patient_files(rows: pd.DataFrame, reference: str = REFERENCE_SEQUENCE
                        ) -> list[Problem]:
    """Every file of one patient, each image/mask pair's geometry and each exam's overlap."""
    problems: list[Problem] = []
    masks: dict[str, tuple[int, sitk.Image | None]] = {}
    exams: dict[str, dict[str, tuple[sitk.Image, dict]]] = {}
    for i, row in rows.iterrows():
        where = {"row": int(i) + 1, "patient_id": _text(row["patient_id"])}
        image, found = filecheck.check_file(row["image_file"], _text(row["image_sha256"]))
        problems += _located(found, row["image_file"], where)
        if image is not None:
            exams.setdefault(_text(row["timepoint"]), {})[_text(row["sequence"])] = (
                image, {**where, "file": row["image_file"]})
        if row["mask_file"] not in masks:
            mask, found = filecheck.check_file(row["mask_file"], _text(row["mask_sha256"]),
                                               mask=True)
            found += filecheck.mask_problems(mask) if mask else []
            problems += _located(found, row["mask_file"], where)
            masks[row["mask_file"]] = (int(i) + 1, mask)
        mask = masks[row["mask_file"]][1]
        if row["sequence"] == reference and image is not None and mask is not None:
            problems += _located(filecheck.geometry_problems(image, mask), row["mask_file"],
                                 where)
    for timepoint, exam in exams.items():
        problems += _check_overlap(exam, reference, timepoint)
    return problems


def _check_overlap(exam: dict[str, tuple[sitk.Image, dict]], reference: str, timepoint: str
                   ) -> list[Problem]:
    """Sequences whose field of view misses the reference's (an all-background channel)."""
    if reference not in exam:
        return []
    apart = sequences_outside_reference({k: v[0] for k, v in exam.items()}, reference)
    return [Problem(f"{timepoint} {name} does not overlap the {reference} field of view in "
                    "physical space (origin or orientation in its header?)", **exam[name][1])
            for name in sorted(apart)]


def _located(messages: Iterable[str], file: str, where: dict) -> list[Problem]:
    """Problems of one file, located at its row and patient."""
    return [Problem(message, file=file, **where) for message in messages]


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


def require_valid(path: str | os.PathLike, check_files: bool = True,
                  reference: str = REFERENCE_SEQUENCE, workers: int | None = None
                  ) -> pd.DataFrame:
    """Validate, raise :class:`ManifestError` listing every problem, else load."""
    problems = validate_manifest(path, check_files=check_files, workers=workers,
                                 reference=reference)
    if problems:
        raise ManifestError(Path(path), problems)
    return load_manifest(path)


def fill_checksums(path: str | os.PathLike) -> Path:
    """Write the sha256 columns of a manifest in place (for users' own cohorts).

    Each is :func:`utils.io.checksum` of the file, or of a DICOM folder's files.
    """
    path = Path(path)
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    base = path.parent
    for path_col, sha_col in (("image_path", "image_sha256"), ("mask_path", "mask_sha256")):
        table[sha_col] = [checksum(base / p) if p and (base / p).exists() else ""
                          for p in table[path_col]]
    return write_atomic(path, lambda tmp: table.to_csv(tmp, index=False))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Check or hash a data manifest.")
    parser.add_argument("command", choices=["check", "hash", "schema"])
    parser.add_argument("path", nargs="?", default="data_manifest.csv")
    parser.add_argument("--no-files", action="store_true", help="check the table only")
    parser.add_argument("--reference-sequence", default=REFERENCE_SEQUENCE,
                        help="the sequence whose grid masks follow (default %(default)s)")
    args = parser.parse_args(argv)
    if args.command == "schema":
        print("\n".join(f"{name:>13}  {text}" for name, text in COLUMNS.items()))
        return 0
    if args.command == "hash":
        print(f"wrote checksums into {fill_checksums(args.path)}")
        return 0
    problems = validate_manifest(args.path, check_files=not args.no_files,
                                 reference=args.reference_sequence)
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
