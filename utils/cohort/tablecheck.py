"""Checks of a manifest's table: columns, cell values and the study design.

Each check returns :class:`~utils.cohort.manifest.Problem` s located at their row and
patient; :func:`utils.cohort.validate.validate_manifest` runs them before the file checks.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from utils.cohort.manifest import COLUMNS, MARKERS, SAFE_ID, Problem, cell_text
from utils.config import (
    COHORTS,
    K_FOLDS,
    MIN_PER_CLASS,
    REFERENCE_SEQUENCE,
    SEQUENCE_NAME,
    TIMEPOINTS,
)


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
        where = {"row": i + 1, "patient_id": cell_text(row["patient_id"])}
        if not cell_text(row["patient_id"]):
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
        if not SEQUENCE_NAME.fullmatch(cell_text(row["sequence"])):
            problems.append(Problem(f"sequence {row['sequence']!r} is not a name made of "
                                    "letters, digits, '_', '-' and '+'", **where))
        if _as_label(row["pcr"]) is None:
            problems.append(Problem(f"pcr {row['pcr']!r} is not 0 or 1", **where))
        problems += [Problem(f"empty {column}", **where) for column in
                     ("image_path", "mask_path", "image_sha256", "mask_sha256")
                     if not cell_text(row[column])]
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
                                row=int(i) + 1, patient_id=cell_text(row["patient_id"])))
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


def class_count_warnings(table: pd.DataFrame) -> list[Problem]:
    """A warning when the training cohort has fewer than ``K_FOLDS`` patients of a class
    (training refuses fewer than ``MIN_PER_CLASS``; preprocessing alone is fine)."""
    training = table[table["cohort"] == "training"].drop_duplicates("patient_id")
    if training.empty:
        return []
    labels = [_as_label(v) for v in training["pcr"]]
    counts = {name: labels.count(value) for name, value in (("pCR", 1), ("non-pCR", 0))}
    if min(counts.values()) >= K_FOLDS:
        return []
    refused = (" (training would refuse it)" if min(counts.values()) < MIN_PER_CLASS
               else "")
    return [Problem(f"the training cohort has {counts['pCR']} pCR and {counts['non-pCR']} "
                    f"non-pCR patient(s){refused}: training needs at least {MIN_PER_CLASS} "
                    f"of each class, and {K_FOLDS} of each for its {K_FOLDS}-fold readout "
                    "and tune split; preprocessing alone is fine", warning=True)]


def _as_label(value: object) -> int | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return int(number) if number in (0.0, 1.0) else None


def _marker_ok(value: object) -> bool:
    if cell_text(value) == "":
        return True
    try:
        number = float(value)
    except (TypeError, ValueError):
        return False
    return math.isfinite(number) and number >= 0
