"""The preprocessing cache's entry format: one verified entry per patient.

An entry in the cache folder (docs/CONTRACTS.md) is ``<patient>.npz`` (arrays and
``meta_json``, no pickle), ``<patient>_post_to_pre.tfm`` and the ``<patient>.json``
sidecar (the patient's QC row plus both files' sha256), written in that order, each
atomically; the sidecar comes last because it marks the patient as done. An entry is
reused only when the sidecar's key (parameters, pipeline version, input checksums) and
both checksums match; anything else is recomputed. :func:`load_cached` reads an entry,
:func:`write_cache_entry` writes one.

This module imports nothing heavy from preprocessing, so training and evaluation read the
cache without loading the pipeline. Filling the cache is :mod:`utils.preprocessing.run`;
its command line is :mod:`utils.preprocessing.cli` (``python -m utils.preprocessing``).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import SimpleITK as sitk

from utils.io import save_npz_atomic, sha256_file, write_atomic, write_json_atomic

if TYPE_CHECKING:
    from utils.preprocessing.params import PreprocessedPair, PreprocessParams

CACHE_ARRAYS = ("image_pre", "image_post", "mask_pre", "mask_post", "spacing_zyx")


class CacheError(ValueError):
    """A damaged or unreadable cache file; the message names the patient and the file."""


def cache_key(params: PreprocessParams, checksums: Mapping[str, str]) -> str:
    """Hash of the parameters, pipeline version and input files' SHA-256."""
    text = json.dumps({"params": params.digest(), "inputs": dict(sorted(checksums.items()))},
                      sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def cached_row(paths: Mapping[str, Path], key: str) -> dict[str, Any] | None:
    """The stored table row if the sidecar key matches and its outputs are intact."""
    try:
        row = json.loads(paths["sidecar"].read_text())
    except (OSError, ValueError):
        return None
    if row.get("cache_key") != key:
        return None
    if row.get("status") != "ok":
        return row
    intact = all(paths[kind].exists() and sha256_file(paths[kind]) == row.get(f"{kind}_sha256")
                 for kind in ("npz", "tfm"))
    return row if intact else None


def load_cached(path: str | os.PathLike) -> dict[str, Any]:
    """A cached patient: the arrays plus ``meta`` (parsed ``meta_json``); no pickle.

    A damaged file raises :class:`CacheError` naming the patient (the file's stem) and the
    file; ``run_preprocessing`` recomputes such an entry (its checksum no longer matches).
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            out = {name: data[name] for name in data.files}
        out["meta"] = json.loads(str(out.pop("meta_json")))
    except Exception as exc:  # BadZipFile, EOFError, zlib.error, KeyError, ValueError...
        raise CacheError(f"patient {path.stem}: cache file {path} is damaged or unreadable "
                         f"({type(exc).__name__}: {exc}); rerun preprocessing to recompute "
                         "it") from exc
    return out


def write_cache_entry(pair: PreprocessedPair, paths: Mapping[str, Path], row: dict[str, Any]
                      ) -> None:
    """npz, transform, then the sidecar (last: it is what marks the patient as done).

    Adds both files' checksums to ``row`` (the sidecar's content), so a damaged file is
    recomputed on reuse. The transform is also inside the npz's ``meta_json``; the ``.tfm``
    is for other ITK tools.
    """
    save_npz_atomic(paths["npz"], **pair.arrays())
    write_atomic(paths["tfm"], lambda tmp: sitk.WriteTransform(pair.transform, str(tmp)))
    row.update(npz_sha256=sha256_file(paths["npz"]), tfm_sha256=sha256_file(paths["tfm"]))
    write_json_atomic(paths["sidecar"], row)
