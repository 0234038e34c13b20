"""Checks of image files that ITK does not make, in plain words.

ITK reads several broken inputs without complaint: a NIfTI, NRRD or MHA file whose voxel
data are shorter than its header says is zero-filled (:mod:`utils.cohort.voxeldata`
measures them), and a header declaring billions of voxels is allocated before anything
fails. The functions here read headers only (never the voxels) to refuse such files, and
judge a volume's voxels (no contrast, mask labels). DICOM folders:
:mod:`utils.cohort.dicom`. Every refusal raises
:class:`~utils.cohort.imageerrors.ImageFileError`; callers add the row, patient and file.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from utils.cohort.headercheck import geometry_checks, require_slices
from utils.cohort.imageerrors import ImageFileError, plain_itk_error
from utils.cohort.voxeldata import data_layout, scan_data

MAX_VOXELS = 512 ** 3  # default limit on the voxels a header may declare
MAX_VOXELS_ENV = "RPNET_MAX_VOXELS"  # overrides MAX_VOXELS (an integer)


@dataclass(frozen=True)
class FileInfo:
    """What a header says, the NaN/inf count when it was asked for, and the header's
    warnings (:func:`utils.cohort.headercheck.geometry_checks`)."""

    dimension: int
    size: tuple[int, ...]
    components: int
    nonfinite: int = 0
    warnings: tuple[str, ...] = ()


def max_voxels(limit: int | None = None) -> int:
    """The voxel limit: ``limit`` if given, else ``$RPNET_MAX_VOXELS``, else MAX_VOXELS."""
    if limit is not None:
        return int(limit)
    value = os.environ.get(MAX_VOXELS_ENV, "").strip()
    try:
        return int(float(value)) if value else MAX_VOXELS
    except ValueError:
        raise ValueError(f"{MAX_VOXELS_ENV}={value!r} is not a number of voxels") from None


def require_voxel_limit(size: Sequence[int], limit: int | None = None) -> None:
    """Refuse a header declaring more voxels than :func:`max_voxels` (before allocating)."""
    voxels, allowed = int(np.prod([int(s) for s in size], dtype=object)), max_voxels(limit)
    if voxels > allowed:
        shape = " x ".join(str(int(s)) for s in size)
        raise ImageFileError(f"header declares {shape} = {voxels:,} voxels, more than the "
                             f"limit of {allowed:,} (set {MAX_VOXELS_ENV} to raise it); "
                             "refused before reading")


# ---------------------------------------------------------------- one image file


def read_header(path: Path) -> sitk.ImageFileReader:
    """An ImageFileReader that has read ``path``'s header only (no voxels)."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as error:
        raise ImageFileError(f"unreadable image: {plain_itk_error(error)}") from error
    return reader


def inspect_file(path: str | os.PathLike, limit: int | None = None,
                 count_nonfinite: bool = False) -> FileInfo:
    """Header facts of one image file, after refusing a voxel count over the limit, a
    zero, negative or NaN spacing, a sheared direction matrix
    (:func:`utils.cohort.headercheck.geometry_checks`) and voxel data shorter than the
    header declares (NIfTI, MHA/MHD, raw or gzip NRRD).

    ``count_nonfinite`` also counts NaN/inf voxels of floating-point NIfTI data (ITK's
    NIfTI reader turns NaN into 0), in the same streaming pass.
    """
    path = Path(path)
    reader = read_header(path)
    size = tuple(int(s) for s in reader.GetSize())
    require_voxel_limit(size, limit)
    warnings = tuple(geometry_checks(path, reader))
    info = FileInfo(reader.GetDimension(), size, reader.GetNumberOfComponents(),
                    warnings=warnings)
    layout = data_layout(path, reader)
    if layout is None:
        return info
    found, nonfinite = scan_data(layout, count_nonfinite)
    if found < layout.expected:
        raise ImageFileError(
            f"truncated image data: the header declares {layout.expected:,} bytes of voxels, "
            f"{layout.file.name} holds {found:,} (file cut short?)")
    return FileInfo(info.dimension, size, info.components, nonfinite, warnings)


def strip_metadata(image: sitk.Image) -> sitk.Image:
    """Drop every header field (DICOM names, dates, IDs); keep pixels and geometry."""
    for key in image.GetMetaDataKeys():
        image.EraseMetaData(key)
    return image


def read_file(path: str | os.PathLike) -> sitk.Image:
    """``sitk.ReadImage`` with ITK's errors in plain words (no checks; see inspect_file)."""
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise ImageFileError(f"unreadable image: {plain_itk_error(error)}") from error


def require_scalar_volume(dimension: int, size: Sequence[int], components: int) -> None:
    """Refuse a 2-D, 4-D or vector-valued image, or one thinner than
    :data:`~utils.cohort.headercheck.MIN_SLICES` voxels along an axis: a scan here is one
    scalar 3-D volume."""
    shape = " x ".join(str(int(s)) for s in size)
    if dimension != 3:
        raise ImageFileError(f"{dimension}-D image (size {shape}): expected a 3-D volume"
                             + (" (one time point or b-value per file)" if dimension > 3 else ""))
    if components != 1:
        raise ImageFileError(f"vector image with {components} components per voxel (e.g. RGB "
                             "or a diffusion series): expected one value per voxel")
    require_slices(size)


def content_problem(pixels: np.ndarray) -> str | None:
    """An image without contrast: all zeros, or every voxel the same value."""
    if pixels.size == 0:
        return "image has no voxels"
    first = pixels.flat[0]
    if not np.all(pixels == first):
        return None
    if first == 0:
        return "image is all zeros (blank or failed export?)"
    return f"image is constant (every voxel is {first:g}): no anatomy"


def mask_problem(pixels: np.ndarray) -> str | None:
    """A mask must hold 0 and 1, or 0 and 255 (both read as tumour where > 0)."""
    if np.all((pixels == 0) | (pixels == 1)) or np.all((pixels == 0) | (pixels == 255)):
        return None
    if pixels.dtype.kind == "f" and np.any(pixels != np.round(pixels)):
        soft = pixels[pixels != np.round(pixels)]
        return (f"mask has non-binary values (e.g. {float(soft.flat[0]):g}): a soft or "
                "interpolated mask? Masks hold 0 and 1 (or 0 and 255)")
    labels = np.unique(pixels)
    shown = ", ".join(f"{v:g}" for v in labels[:10]) + (", ..." if labels.size > 10 else "")
    return f"mask has labels [{shown}]: expected 0 and 1 (or 0 and 255)"
