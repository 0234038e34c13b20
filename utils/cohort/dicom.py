"""DICOM series folders: one series per folder, read after checking its slice spacing.

ITK stacks a series with a missing or repeated slice at the wrong spacing without
complaint; :func:`slice_spacing_problem` finds such a gap from the slices' positions.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from utils.cohort.imagecheck import read_header, require_voxel_limit
from utils.cohort.imageerrors import ImageFileError, plain_itk_error

SLICE_TOLERANCE_MM = 0.01  # absolute tolerance on DICOM slice steps ...
SLICE_TOLERANCE = 1e-3  # ... or relative to the median step, whichever is larger


def dicom_series_files(folder: Path) -> list[str]:
    """The files of the one DICOM series in ``folder``, in slice order."""
    reader = sitk.ImageSeriesReader()
    series = reader.GetGDCMSeriesIDs(str(folder))
    if not series:
        raise ImageFileError("folder holds no DICOM series")
    if len(series) > 1:
        raise ImageFileError(f"folder holds {len(series)} DICOM series "
                             f"({', '.join(series[:4])}); keep one per folder")
    return list(reader.GetGDCMSeriesFileNames(str(folder), series[0]))


def slice_positions(files: Sequence[str]) -> np.ndarray | None:
    """Each file's Image Position (0020|0032) projected on the slice normal (mm), or None
    when a file lacks position or orientation (0020|0037)."""
    reader = sitk.ImageFileReader()
    positions, normal = [], None
    for file in files:
        reader.SetFileName(file)
        reader.ReadImageInformation()
        if not (reader.HasMetaDataKey("0020|0032") and reader.HasMetaDataKey("0020|0037")):
            return None
        position = _numbers(reader.GetMetaData("0020|0032"), 3)
        cosines = _numbers(reader.GetMetaData("0020|0037"), 6)
        if position is None or cosines is None:
            return None
        normal = np.cross(cosines[:3], cosines[3:]) if normal is None else normal
        positions.append(float(np.dot(position, normal)))
    return np.array(positions)


def _numbers(text: str, count: int) -> np.ndarray | None:
    try:
        values = np.array([float(v) for v in text.strip().split("\\")])
    except ValueError:
        return None
    return values if values.size == count and np.all(np.isfinite(values)) else None


def slice_spacing_problem(files: Sequence[str]) -> str | None:
    """A missing, repeated or misplaced slice: steps between slice positions not uniform."""
    positions = slice_positions(files)
    if positions is None or len(positions) < 3:
        return None
    order = np.argsort(positions)
    steps = np.diff(positions[order])
    names = [Path(files[i]).name for i in order]
    if np.any(steps == 0):
        i = int(np.flatnonzero(steps == 0)[0])
        return f"two slices at the same position: files {names[i]} and {names[i + 1]}"
    typical = float(np.median(steps))
    deviation = np.abs(steps - typical)
    if deviation.max() <= max(SLICE_TOLERANCE_MM, SLICE_TOLERANCE * typical):
        return None
    i = int(np.argmax(deviation))
    return (f"slice spacing varies: {steps.min():.4g} mm ... {steps.max():.4g} mm, "
            f"{steps[i]:.4g} mm between files {names[i]} and {names[i + 1]} "
            "(missing slice?)")


def read_dicom_series(folder: str | os.PathLike, limit: int | None = None) -> sitk.Image:
    """The one series of a DICOM folder, after checking its slice spacing and size."""
    files = dicom_series_files(Path(folder))
    if problem := slice_spacing_problem(files):
        raise ImageFileError(problem)
    size = list(read_header(Path(files[0])).GetSize())  # (x, y, frames) or (x, y)
    require_voxel_limit([*size[:2], int(np.prod(size[2:], dtype=np.int64)) * len(files)], limit)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    try:
        return reader.Execute()
    except RuntimeError as error:
        raise ImageFileError(f"unreadable DICOM series: {plain_itk_error(error)}") from error
