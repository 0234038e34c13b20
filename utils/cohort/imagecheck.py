"""Checks of image files and DICOM folders that ITK does not make, in plain words.

ITK reads several broken inputs without complaint: a NIfTI, NRRD or MHA file whose voxel
data are shorter than its header says is zero-filled, a header declaring billions of
voxels is allocated before anything fails, and a DICOM series with a missing slice is
stacked with the wrong spacing. The functions here read headers only (never the voxels)
to refuse such files, and :func:`plain_itk_error` turns ITK's exception text into words.
Every refusal raises :class:`ImageFileError`; callers add the row, patient and file.
"""

from __future__ import annotations

import gzip
import os
import re
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import SimpleITK as sitk

MAX_VOXELS = 512 ** 3  # default limit on the voxels a header may declare
MAX_VOXELS_ENV = "RPNET_MAX_VOXELS"  # overrides MAX_VOXELS (an integer)
SLICE_TOLERANCE_MM = 0.01  # absolute tolerance on DICOM slice steps ...
SLICE_TOLERANCE = 1e-3  # ... or relative to the median step, whichever is larger
CHUNK = 1 << 20

ITK_MESSAGES: tuple[tuple[tuple[str, ...], str], ...] = (
    (("gzip", "zlib", "inflate", "compressed", "unexpected end of file"),
     "truncated or corrupt compressed data"),
    (("could not create io object", "unable to determine imageio"),
     "not an image format SimpleITK can read (NIfTI, NRRD, MHA or a DICOM folder)"),
    (("does not exist", "unable to open", "no such file", "cannot be read", "cannot open"),
     "cannot open file"),
    (("all samples map outside moving image buffer",),
     "the two exams do not overlap after initial alignment"),
    (("too many samples map outside moving image buffer",),
     "too few overlapping voxels between the two exams"),
    (("joint pdf summed to zero",), "no overlapping intensities (empty or constant image)"),
    (("bad_alloc", "out of memory", "failed to allocate"), "not enough memory"),
)


class ImageFileError(ValueError):
    """An image file or DICOM folder that must not be used; the message is plain words."""


@dataclass(frozen=True)
class FileInfo:
    """What a header says, and the NaN/inf count when it was asked for."""

    dimension: int
    size: tuple[int, ...]
    components: int
    nonfinite: int = 0


@dataclass(frozen=True)
class DataLayout:
    """Where a file's voxel data lie and how many bytes its header promises."""

    file: Path  # the file holding the data (the header's own file, or a detached one)
    offset: int  # raw bytes before the data
    expected: int  # data bytes the header declares
    compressed: bool = False  # gzip or zlib stream from ``offset`` on
    skip: int = 0  # decompressed bytes before the data (NIfTI .nii.gz)
    dtype: str | None = None  # numpy dtype of floating-point data, for NaN counting


def plain_itk_error(exc: BaseException) -> str:
    """``"<plain words> (ITK: <first informative line>)"`` for an ITK exception.

    Messages of this package's own errors (:class:`ImageFileError`) pass unchanged.
    """
    if isinstance(exc, ImageFileError):
        return str(exc)
    plain, detail = itk_words(exc)
    return f"{plain} (ITK: {detail})"


def itk_words(exc: BaseException, fallback: str = "SimpleITK could not read it"
              ) -> tuple[str, str]:
    """``(plain words, ITK's first informative line)`` for an ITK exception."""
    text = str(exc)
    lowered = re.sub(r'"[^"]*"|\S*/\S*', " ", text).lower()  # file names say nothing
    plain = next((words for keys, words in ITK_MESSAGES if any(k in lowered for k in keys)),
                 fallback)
    return plain, _first_line(text) or type(exc).__name__


def _first_line(text: str, limit: int = 160) -> str:
    """The first line of ITK's text that says something (not 'Exception thrown in ...')."""
    for line in text.strip().splitlines():
        line = re.sub(r"^((?:sitk|itk)::ERROR:|ITK ERROR:)\s*(\w+\(0x[0-9a-f]+\):)?\s*", "",
                      line.strip())
        if line and not line.startswith("Exception thrown in"):
            return line[:limit]
    return ""


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
    """Header facts of one image file, after refusing a voxel count over the limit and
    voxel data shorter than the header declares (NIfTI, MHA/MHD, raw or gzip NRRD).

    ``count_nonfinite`` also counts NaN/inf voxels of floating-point NIfTI data (ITK's
    NIfTI reader turns NaN into 0), in the same streaming pass.
    """
    path = Path(path)
    reader = read_header(path)
    size = tuple(int(s) for s in reader.GetSize())
    require_voxel_limit(size, limit)
    info = FileInfo(reader.GetDimension(), size, reader.GetNumberOfComponents())
    layout = data_layout(path, reader)
    if layout is None:
        return info
    found, nonfinite = scan_data(layout, count_nonfinite)
    if found < layout.expected:
        raise ImageFileError(
            f"truncated image data: the header declares {layout.expected:,} bytes of voxels, "
            f"{layout.file.name} holds {found:,} (file cut short?)")
    return FileInfo(info.dimension, size, info.components, nonfinite)


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
    """Refuse a 2-D, 4-D or vector-valued image: a scan here is one scalar 3-D volume."""
    shape = " x ".join(str(int(s)) for s in size)
    if dimension != 3:
        raise ImageFileError(f"{dimension}-D image (size {shape}): expected a 3-D volume"
                             + (" (one time point or b-value per file)" if dimension > 3 else ""))
    if components != 1:
        raise ImageFileError(f"vector image with {components} components per voxel (e.g. RGB "
                             "or a diffusion series): expected one value per voxel")


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


# ---------------------------------------------------------------- data length


def data_layout(path: Path, reader: sitk.ImageFileReader) -> DataLayout | None:
    """Where ``path``'s voxel data lie, or None for a layout not checked here."""
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        return nifti_layout(path)
    kind = mha_layout if name.endswith((".mha", ".mhd")) else (
        nrrd_layout if name.endswith((".nrrd", ".nhdr")) else None)
    itemsize = _component_bytes(reader.GetPixelID())
    if kind is None or itemsize is None:
        return None
    voxels = int(np.prod(reader.GetSize(), dtype=np.int64)) * reader.GetNumberOfComponents()
    return kind(path, voxels * itemsize)


def _component_bytes(pixel_id: int) -> int | None:
    try:
        return int(sitk.GetArrayViewFromImage(sitk.Image([1, 1], pixel_id)).dtype.itemsize)
    except (RuntimeError, TypeError, ValueError):
        return None


NIFTI_FLOATS = {16: "f4", 64: "f8"}


def nifti_layout(path: Path) -> DataLayout | None:
    """NIfTI-1 or NIfTI-2 single file (``.nii``/``.nii.gz``) from its raw header."""
    compressed = path.name.lower().endswith(".gz")
    opener = gzip.open if compressed else open
    try:
        with opener(path, "rb") as handle:
            raw = handle.read(540)
    except (OSError, EOFError, zlib.error) as error:
        raise ImageFileError(f"unreadable or truncated image: header ({error})") from error
    for endian in "<>":
        fields = _nifti_fields(raw, endian)
        if fields is not None:
            break
    else:
        return None
    dims, bitpix, datatype, offset = fields
    expected = int(np.prod(dims, dtype=np.int64)) * bitpix // 8
    dtype = f"{endian}{NIFTI_FLOATS[datatype]}" if datatype in NIFTI_FLOATS else None
    if compressed:
        return DataLayout(path, 0, expected, compressed=True, skip=offset, dtype=dtype)
    return DataLayout(path, offset, expected, dtype=dtype)


def _nifti_fields(raw: bytes, endian: str) -> tuple[list[int], int, int, int] | None:
    """(dims, bitpix, datatype, vox_offset) of a single-file NIfTI header, or None."""
    if len(raw) < 348:
        return None
    sizeof = int(np.frombuffer(raw[:4], f"{endian}i4")[0])
    if sizeof == 348 and raw[344:348] == b"n+1\0":
        dim = np.frombuffer(raw[40:56], f"{endian}i2").astype(int)
        datatype, bitpix = np.frombuffer(raw[70:74], f"{endian}i2").astype(int)
        offset = int(np.frombuffer(raw[108:112], f"{endian}f4")[0])
    elif sizeof == 540 and len(raw) >= 540 and raw[4:8] == b"n+2\0":
        datatype, bitpix = np.frombuffer(raw[12:16], f"{endian}i2").astype(int)
        dim = np.frombuffer(raw[16:80], f"{endian}i8").astype(int)
        offset = int(np.frombuffer(raw[168:176], f"{endian}i8")[0])
    else:
        return None
    if not 1 <= dim[0] <= 7:
        return None
    return [max(int(d), 1) for d in dim[1:dim[0] + 1]], int(bitpix), int(datatype), offset


def _text_header(path: Path, end: re.Pattern[bytes]) -> tuple[dict[str, str], int]:
    """``key: value`` / ``key = value`` fields of a text header and its length in bytes."""
    with open(path, "rb") as handle:
        head = handle.read(1 << 16)
    stop = end.search(head)
    length = stop.end() if stop else len(head)
    fields = {}
    for line in head[:length].decode("latin-1").splitlines():
        if field := re.match(r"\s*([^:=]+?)\s*(?::=|=|:)\s*(.*)$", line):
            fields[field[1].lower().replace(" ", "")] = field[2].strip()
    return fields, length


def mha_layout(path: Path, expected: int) -> DataLayout | None:
    """MetaImage: data after the ``ElementDataFile = LOCAL`` line, or in a detached file."""
    fields, length = _text_header(path, re.compile(rb"ElementDataFile\s*=[^\n]*\n"))
    target = fields.get("elementdatafile", "")
    compressed = fields.get("compresseddata", "false").lower() == "true"
    if target.upper() == "LOCAL":
        return DataLayout(path, length, expected, compressed)
    if not target or "%" in target or target.upper().startswith("LIST") or " " in target:
        return None
    skip = int(fields.get("headersize", "0") or 0)
    return None if skip < 0 else DataLayout(path.parent / target, skip, expected, compressed)


def nrrd_layout(path: Path, expected: int) -> DataLayout | None:
    """NRRD with raw or gzip encoding: data after the blank line, or in a detached file."""
    fields, length = _text_header(path, re.compile(rb"\r?\n\r?\n"))
    encoding = fields.get("encoding", "raw").lower()
    if encoding not in ("raw", "gzip", "gz") or any(
            int(fields.get(k, "0") or 0) for k in ("lineskip", "byteskip")):
        return None
    target = fields.get("datafile", "")
    if target and ("%" in target or target.upper().startswith("LIST") or " " in target):
        return None
    data = path.parent / target if target else path
    return DataLayout(data, 0 if target else length, expected, encoding != "raw")


def scan_data(layout: DataLayout, count_nonfinite: bool = False) -> tuple[int, int]:
    """(bytes of voxel data present, NaN/inf count of floating-point data), streamed.

    Uncompressed files are measured by their size unless NaNs are to be counted; a gzip or
    zlib stream is decompressed chunk by chunk (never held whole) and must be complete.
    """
    if not layout.file.is_file():
        raise ImageFileError(f"cannot open file: the data file {layout.file.name} is missing")
    counting = count_nonfinite and layout.dtype is not None
    if not layout.compressed and not counting:
        return max(layout.file.stat().st_size - layout.offset, 0), 0
    found, nonfinite, carry = 0, 0, b""
    itemsize = np.dtype(layout.dtype).itemsize if counting else 1
    for block in _data_chunks(layout):
        if counting and found < layout.expected:
            buffer = carry + block[:layout.expected - found]
            whole = len(buffer) - len(buffer) % itemsize
            values = np.frombuffer(buffer[:whole], layout.dtype)
            nonfinite += int(values.size - np.count_nonzero(np.isfinite(values)))
            carry = buffer[whole:]
        found += len(block)
    return found, nonfinite


def _data_chunks(layout: DataLayout) -> Iterator[bytes]:
    """The (decompressed) voxel data after the header, in bounded chunks."""
    to_skip = layout.skip
    for block in _raw_chunks(layout):
        if to_skip:
            dropped = min(to_skip, len(block))
            block, to_skip = block[dropped:], to_skip - dropped
        if block:
            yield block


def _raw_chunks(layout: DataLayout) -> Iterator[bytes]:
    with open(layout.file, "rb") as handle:
        handle.seek(layout.offset)
        if layout.compressed:
            yield from _inflate(handle)
        else:
            while block := handle.read(CHUNK):
                yield block


def _inflate(handle: BinaryIO) -> Iterator[bytes]:
    """Decompress gzip or zlib data in bounded chunks; every gzip member must be complete
    (several members, as bgzip writes, are read in turn; zero padding is ignored)."""
    block = handle.read(CHUNK)
    while block:
        stream = zlib.decompressobj(zlib.MAX_WBITS | 32)  # gzip or zlib header
        try:
            while block and not stream.eof:
                yield stream.decompress(block, CHUNK)
                block = stream.unconsumed_tail or handle.read(CHUNK)
            if not stream.eof:
                yield stream.flush()
        except zlib.error as error:
            raise ImageFileError("unreadable or truncated image: corrupt compressed data "
                                 f"({error})") from error
        if not stream.eof:
            raise ImageFileError("unreadable or truncated image: the compressed stream ends "
                                 "early (file cut short)")
        block = (stream.unused_data + block).lstrip(b"\0")
        if not block.startswith(b"\x1f\x8b"):
            return  # nothing more, or trailing bytes that are no gzip member


# ---------------------------------------------------------------- DICOM folders


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
