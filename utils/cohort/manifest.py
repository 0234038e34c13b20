"""The data contract: ``data_manifest.csv``'s schema, reading a manifest and its images.

One row per image file. Paths are relative to the manifest's own folder. Checking a
manifest is :mod:`utils.cohort.validate` (``python -m utils.manifest check PATH``), with
the table checks of :mod:`utils.cohort.tablecheck` and the file checks of
:mod:`utils.cohort.filecheck`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from utils.cohort import dicom, imagecheck
from utils.config import COHORTS, REFERENCE_SEQUENCE
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
    """One thing wrong with a manifest, located as precisely as possible. A ``warning``
    (printed as ``warning: ...``) may be right and does not make the manifest invalid."""

    message: str
    row: int | None = None  # 1-based data row of the CSV (header excluded)
    patient_id: str | None = None
    file: str | None = None
    warning: bool = False

    def __str__(self) -> str:
        where = [f"row {self.row}" if self.row else None,
                 f"patient {self.patient_id}" if self.patient_id else None,
                 f"file {self.file}" if self.file else None]
        located = ", ".join(w for w in where if w)
        text = f"{located}: {self.message}" if located else self.message
        return f"warning: {text}" if self.warning else text


def errors_of(problems: Sequence[Problem]) -> list[Problem]:
    """The problems that make a manifest invalid (not the warnings)."""
    return [p for p in problems if not p.warning]


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

    Refuses (:class:`~utils.cohort.imageerrors.ImageFileError`, in plain words) a header
    declaring more than ``max_voxels`` (default ``$RPNET_MAX_VOXELS`` or 512**3) voxels,
    voxel data shorter than the header says, and a DICOM folder with no, several, or
    unevenly spaced series. Validation's full checks of a file (NaN voxels, contrast, mask
    labels) are :func:`utils.cohort.filecheck.read_checked`.
    """
    path = Path(path)
    if path.is_dir():
        return imagecheck.strip_metadata(dicom.read_dicom_series(path, max_voxels))
    imagecheck.inspect_file(path, max_voxels)
    return imagecheck.strip_metadata(imagecheck.read_file(path))


def load_manifest(path: str | os.PathLike) -> pd.DataFrame:
    """Read a manifest and add absolute ``image_file`` and ``mask_file`` columns."""
    path = Path(path).resolve()
    table = pd.read_csv(path, dtype={"patient_id": str, "centre": str})
    base = path.parent
    for column, files in (("image_path", "image_file"), ("mask_path", "mask_file")):
        table[files] = [str(base / p) if cell_text(p) else "" for p in table[column]]
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


def cell_text(value: object) -> str:
    """A manifest cell as text: empty for a missing value (NaN or None)."""
    return "" if value is None or (isinstance(value, float) and np.isnan(value)) else str(value)
