"""The voxel data of NIfTI, MHA/MHD and NRRD files, read from their raw bytes.

ITK zero-fills voxel data shorter than the header says, and its NIfTI reader turns NaN
into 0. :func:`data_layout` finds where a file's data lie and how many bytes its header
promises; :func:`scan_data` streams them (never whole) to count the bytes present and the
NaN/inf values. Used by :func:`utils.cohort.imagecheck.inspect_file`.
"""

from __future__ import annotations

import gzip
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import SimpleITK as sitk

from utils.cohort.imageerrors import ImageFileError

CHUNK = 1 << 20


@dataclass(frozen=True)
class DataLayout:
    """Where a file's voxel data lie and how many bytes its header promises."""

    file: Path  # the file holding the data (the header's own file, or a detached one)
    offset: int  # raw bytes before the data
    expected: int  # data bytes the header declares
    compressed: bool = False  # gzip or zlib stream from ``offset`` on
    skip: int = 0  # decompressed bytes before the data (NIfTI .nii.gz)
    dtype: str | None = None  # numpy dtype of floating-point data, for NaN counting


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


def _nifti_bytes(path: Path) -> bytes:
    """The first 540 bytes of a ``.nii`` or ``.nii.gz`` file (a NIfTI-2 header's length)."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as handle:
            return handle.read(540)
    except (OSError, EOFError, zlib.error) as error:
        raise ImageFileError(f"unreadable or truncated image: header ({error})") from error


@dataclass(frozen=True)
class NiftiGeometry:
    """The geometry fields of a NIfTI-1 header, as written (before ITK's defaults)."""

    pixdim: tuple[float, float, float]  # pixdim[1..3], mm
    qform_code: int
    sform_code: int
    srow: np.ndarray  # 3 x 4 affine of the sform


def nifti_geometry(path: Path) -> NiftiGeometry | None:
    """pixdim[1..3], qform_code, sform_code and the sform of a NIfTI-1 single file (either
    byte order), or None for another header (NIfTI-2, a damaged header)."""
    raw = _nifti_bytes(path)
    for endian in "<>":
        if len(raw) >= 348 and int(np.frombuffer(raw[:4], f"{endian}i4")[0]) == 348 \
                and raw[344:348] in (b"n+1\0", b"ni1\0"):
            pixdim = np.frombuffer(raw[76:108], f"{endian}f4").astype(float)
            qform, sform = np.frombuffer(raw[252:256], f"{endian}i2").astype(int)
            srow = np.frombuffer(raw[280:328], f"{endian}f4").astype(float).reshape(3, 4)
            return NiftiGeometry(tuple(pixdim[1:4]), int(qform), int(sform), srow)
    return None


def nifti_layout(path: Path) -> DataLayout | None:
    """NIfTI-1 or NIfTI-2 single file (``.nii``/``.nii.gz``) from its raw header."""
    compressed = path.name.lower().endswith(".gz")
    raw = _nifti_bytes(path)
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
