"""Checks of a manifest's files: existence, checksum, header, voxel values, mask labels,
each image/mask pair's grid and each exam's field of view; and scans listed twice.

One file: :func:`check_file` returns plain messages, :func:`read_checked` reads a file
after the same checks or raises (the prediction path). One patient:
:func:`check_patient_files` locates each message at its row, patient and file;
:func:`check_all_files` runs the patients on a process pool. The header checks themselves
(voxel limit, truncated data, DICOM slice spacing) are :mod:`utils.cohort.imagecheck`'s.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from utils.cohort import dicom, headercheck, imagecheck
from utils.cohort.imageerrors import ImageFileError, plain_itk_error
from utils.cohort.manifest import Problem, cell_text
from utils.config import REFERENCE_SEQUENCE, Profile
from utils.geometry import format_values, reference_grid, sequences_outside_reference
from utils.io import checksum
from utils.parallel import map_processes

GEOMETRY_TOLERANCE = 1e-3  # relative, for spacing, origin (mm) and direction cosines


def check_file(file: str, expected_sha: str, mask: bool = False
               ) -> tuple[sitk.Image | None, list[str]]:
    """Existence, checksum, header, data length, shape and voxel values of one file.

    Returns the image (None when it cannot be used) and the problems found. An empty
    ``file`` (an empty path cell, reported by the table checks) gives ``(None, [])``;
    an empty ``expected_sha`` skips the checksum. A mask's labels are
    :func:`mask_problems`'. Warnings: :func:`inspect_checked`.
    """
    image, problems, _ = inspect_checked(file, expected_sha, mask)
    return image, problems


def inspect_checked(file: str, expected_sha: str, mask: bool = False
                    ) -> tuple[sitk.Image | None, list[str], list[str]]:
    """:func:`check_file`'s image and problems, and the file's warnings (header geometry,
    saturated voxels) that may be right."""
    if not file:
        return None, [], []
    path = Path(file)
    if not path.exists():
        return None, ["file does not exist"], []
    if expected_sha and checksum(path) != expected_sha:
        return None, ["sha256 does not match the manifest (file changed or corrupt)"], []
    try:
        image, nonfinite, warnings = _read_with_checks(path)
    except Exception as error:
        return None, [str(error) if isinstance(error, ImageFileError)
                      else f"unreadable image: {plain_itk_error(error)}"], []
    saturated = None if mask else headercheck.saturation_warning(
        sitk.GetArrayViewFromImage(image))
    return image, _voxel_problems(image, nonfinite, mask), warnings + (
        [saturated] if saturated else [])


def read_checked(file: str | os.PathLike, mask: bool = False) -> sitk.Image:
    """One image (or mask) read after manifest validation's checks of a file, less the
    checksum: :func:`check_file`, and a mask's labels (an empty mask is allowed here).

    Raises :class:`~utils.cohort.imageerrors.ImageFileError` naming the file and every
    problem (e.g. NaN voxels of a NIfTI file, which ITK's reader turns into zeros).
    """
    image, problems = check_file(str(file), "", mask=mask)
    if image is not None and mask:
        problems += mask_problems(image, empty_ok=True)
    if image is None or problems:
        raise ImageFileError(f"{file}: {'; '.join(problems) or 'no file given'}")
    return image


def _read_with_checks(path: Path) -> tuple[sitk.Image, int, list[str]]:
    """An image file or DICOM folder read after every header check, its NaN/inf count
    from the raw NIfTI data and its header warnings; raises
    :class:`~utils.cohort.imageerrors.ImageFileError`."""
    warnings: list[str] = []
    if path.is_dir():
        image, nonfinite = imagecheck.strip_metadata(dicom.read_dicom_series(path)), 0
    else:
        info = imagecheck.inspect_file(path, count_nonfinite=True)
        imagecheck.require_scalar_volume(info.dimension, info.size, info.components)
        image = imagecheck.strip_metadata(imagecheck.read_file(path))
        nonfinite, warnings = info.nonfinite, list(info.warnings)
    imagecheck.require_scalar_volume(image.GetDimension(), image.GetSize(),
                                     image.GetNumberOfComponentsPerPixel())
    return image, nonfinite, warnings


def _voxel_problems(image: sitk.Image, nonfinite: int, mask: bool) -> list[str]:
    """NaN/inf voxels (ITK's NIfTI reader hides them as 0); images without contrast."""
    pixels = sitk.GetArrayViewFromImage(image)
    count = max(int(pixels.size - np.count_nonzero(np.isfinite(pixels))), nonfinite)
    if count:
        return [f"{count} NaN or infinite voxel(s)"]
    problem = None if mask else imagecheck.content_problem(pixels)
    return [problem] if problem else []


def mask_problems(mask: sitk.Image, empty_ok: bool = False) -> list[str]:
    """Labels 0 and 1, or 0 and 255 (both read as tumour where > 0), and not empty
    (unless ``empty_ok``: a post-treatment mask of a complete response may be empty)."""
    pixels = sitk.GetArrayViewFromImage(mask)
    if problem := imagecheck.mask_problem(pixels):
        return [problem]
    if not empty_ok and not np.any(pixels > 0):
        return ["pre-treatment mask is empty (no tumour voxel): the ROI is placed on the "
                "pre-treatment tumour, so it must be outlined"]
    return []


def mask_warnings(mask: sitk.Image, roi_mm_zyx: Sequence[float] | None) -> list[str]:
    """A tumour larger than the profile's ROI box (in mm), or touching the volume's edge."""
    pixels = sitk.GetArrayViewFromImage(mask)
    if not np.any(pixels > 0):
        return []
    index = np.argwhere(pixels > 0)
    lo, hi = index.min(axis=0), index.max(axis=0)
    extent = (hi - lo + 1) * np.asarray(mask.GetSpacing()[::-1])
    found = []
    if roi_mm_zyx is not None and np.any(extent > np.asarray(roi_mm_zyx)):
        found.append(f"tumour extent {format_values(extent.round(1))} mm (z, y, x) exceeds "
                     f"the profile's ROI box {format_values(roi_mm_zyx)} mm: preprocessing "
                     "may refuse it (a larger-ROI profile, or a wrong mask?)")
    if np.any(lo == 0) or np.any(hi == np.asarray(pixels.shape) - 1):
        found.append("mask touches the edge of the volume: the tumour may extend outside "
                     "the field of view")
    return found


def grid_problems(image: sitk.Image, spacing_zyx: Sequence[float] | None) -> list[str]:
    """A reference image that, at the profile's spacing, is thinner than
    :data:`~utils.cohort.headercheck.MIN_SLICES` voxels along an axis."""
    if spacing_zyx is None:
        return []
    size = reference_grid(image, spacing_zyx).GetSize()
    return [f"field of view of {image.GetSize()[a] * image.GetSpacing()[a]:g} mm along "
            f"{headercheck.AXES[a]} is {size[a]} voxel(s) at the profile's "
            f"{spacing_zyx[::-1][a]:g} mm spacing: registration needs at least "
            f"{headercheck.MIN_SLICES}" for a in range(3) if size[a] < headercheck.MIN_SLICES]


def geometry_problems(image: sitk.Image, mask: sitk.Image) -> list[str]:
    """Where a mask's grid (size, spacing, origin, direction) differs from its image's."""
    checks = {
        "size": (image.GetSize(), mask.GetSize(), 0.0),
        "spacing": (image.GetSpacing(), mask.GetSpacing(), GEOMETRY_TOLERANCE),
        "origin": (image.GetOrigin(), mask.GetOrigin(), GEOMETRY_TOLERANCE),
        "direction": (image.GetDirection(), mask.GetDirection(), GEOMETRY_TOLERANCE),
    }
    return [f"mask {name} {format_values(found)} differs from the reference image's "
            f"{format_values(expected)}" for name, (expected, found, tol) in checks.items()
            if not np.allclose(expected, found, rtol=tol, atol=tol)]


# ---------------------------------------------------------------- a manifest's files


def check_all_files(manifest: pd.DataFrame, workers: int | None = None,
                    reference: str = REFERENCE_SEQUENCE, profile: Profile | None = None
                    ) -> list[Problem]:
    """File checks (existence, checksum, readability, geometry), one patient per task;
    with a ``profile``, also against its ROI box and spacing."""
    groups = [rows for _, rows in manifest.groupby("patient_id", sort=False)]
    check = partial(check_patient_files, reference=reference, profile=profile)
    results = map_processes(check, groups, workers, chunksize=4)
    return [p for result in results for p in result] + duplicate_images(manifest)


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
        keys = [k for k in (cell_text(sha), os.path.realpath(file) if file else "") if k]
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
                    patient_id=cell_text(row["patient_id"]), file=str(row["image_file"]))]


def check_patient_files(rows: pd.DataFrame, reference: str = REFERENCE_SEQUENCE,
                        profile: Profile | None = None) -> list[Problem]:
    """Every file of one patient, each image/mask pair's geometry and each exam's overlap;
    with a ``profile``, the reference grid's thickness and each tumour against its ROI box.
    An empty mask is refused for the pre exam only."""
    problems: list[Problem] = []
    masks: dict[str, tuple[int, sitk.Image | None]] = {}
    exams: dict[str, dict[str, tuple[sitk.Image, dict]]] = {}
    spacing = None if profile is None else tuple(profile.spacing_zyx)
    roi_mm = None if profile is None else tuple(
        float(n * s) for n, s in zip(profile.roi_zyx, profile.spacing_zyx, strict=True))
    for i, row in rows.iterrows():
        where = {"row": int(i) + 1, "patient_id": cell_text(row["patient_id"])}
        image, found, warned = inspect_checked(row["image_file"], cell_text(row["image_sha256"]))
        reference_row = row["sequence"] == reference
        found += grid_problems(image, spacing) if image is not None and reference_row else []
        problems += _located(found, row["image_file"], where)
        problems += _located(warned, row["image_file"], where, warning=True)
        if image is not None:
            exams.setdefault(cell_text(row["timepoint"]), {})[cell_text(row["sequence"])] = (
                image, {**where, "file": row["image_file"]})
        if row["mask_file"] not in masks:
            mask, found, warned = inspect_checked(row["mask_file"],
                                                  cell_text(row["mask_sha256"]), mask=True)
            if mask is not None:
                found += mask_problems(mask, empty_ok=row["timepoint"] == "post")
                warned += mask_warnings(mask, roi_mm) if not found else []
            problems += _located(found, row["mask_file"], where)
            problems += _located(warned, row["mask_file"], where, warning=True)
            masks[row["mask_file"]] = (int(i) + 1, mask)
        mask = masks[row["mask_file"]][1]
        if reference_row and image is not None and mask is not None:
            problems += _located(geometry_problems(image, mask), row["mask_file"], where)
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


def _located(messages: Iterable[str], file: str, where: dict, warning: bool = False
             ) -> list[Problem]:
    """Problems (or warnings) of one file, located at its row and patient."""
    return [Problem(message, file=file, warning=warning, **where) for message in messages]
