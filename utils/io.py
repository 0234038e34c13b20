"""Atomic file writing: every output goes to a temporary name and is renamed into place."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np


@contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` on success.

    The temporary name keeps the target's suffixes (``.nii.gz``, ``.npz``) so that
    writers choosing a format by extension still work. On error it is removed.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(target.suffixes)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name.split('.')[0]}.", suffix=suffix,
                               dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_atomic(target: str | os.PathLike, writer: Callable[[Path], None]) -> Path:
    """Call ``writer(tmp_path)`` and rename the result onto ``target``."""
    with atomic_path(target) as tmp:
        writer(tmp)
    return Path(target)


def write_text_atomic(target: str | os.PathLike, text: str) -> Path:
    return write_atomic(target, lambda p: p.write_text(text, encoding="utf-8"))


def write_json_atomic(target: str | os.PathLike, obj) -> Path:
    return write_text_atomic(target, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def save_npz_atomic(target: str | os.PathLike, **arrays: np.ndarray) -> Path:
    """Compressed ``.npz`` without pickle, byte-identical for identical arrays.

    ``np.savez_compressed`` stamps each member with the current time; here every member
    gets a fixed timestamp, so checksums of the file confirm its contents.
    """
    def _write(tmp: Path) -> None:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for name, value in arrays.items():
                info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_DEFLATED
                with archive.open(info, "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, np.asanyarray(value),
                                              allow_pickle=False)
    return write_atomic(target, _write)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def checksum(path: str | os.PathLike) -> str:
    """sha256 (hex) of a file, or of a folder such as a DICOM series.

    A file: sha256 of its bytes (:func:`sha256_file`). A folder: sha256 of the UTF-8 text
    made of one line ``"<relative path>\\t<sha256 of the file>\\n"`` per regular file under
    it (recursive; relative paths with ``/``; files and folders whose name starts with
    ``.`` skipped), lines sorted. Renaming, adding, removing or changing a file changes it.
    """
    path = Path(path)
    if not path.is_dir():
        return sha256_file(path)
    lines = sorted(f"{file.relative_to(path).as_posix()}\t{sha256_file(file)}\n"
                   for file in _visible_files(path))
    return hashlib.sha256("".join(lines).encode("utf-8")).hexdigest()


def _visible_files(folder: Path) -> Iterator[Path]:
    """Regular files under ``folder``, skipping hidden files and folders."""
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            file = Path(root) / name
            if not name.startswith(".") and file.is_file():
                yield file
