"""Reproducibility: seeds, op determinism, and the versions-and-date cell."""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
import platform
import random

import numpy as np

PACKAGES = ("keras", "tensorflow", "jax", "torch", "SimpleITK", "numpy", "scipy", "pandas",
            "matplotlib", "scikit-learn")


def set_seeds(seed: int, deterministic: bool = True) -> None:
    """Seed Python, NumPy and Keras (hence the backend) and turn on op determinism."""
    os.environ["PYTHONHASHSEED"] = str(seed)
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 - seeds the legacy global state third-party code uses
    import keras

    keras.utils.set_random_seed(seed)
    if deterministic and keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()


def derive_seed(base_seed: int, *keys: object) -> int:
    """A stable 32-bit seed from a base seed and keys (e.g. a patient id).

    Independent of call order and process, so patients can be handled in parallel.
    """
    text = "/".join([str(base_seed), *map(str, keys)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")


def derived_rng(base_seed: int, *keys: object) -> np.random.Generator:
    """A NumPy generator seeded by :func:`derive_seed` (same keys, same stream)."""
    return np.random.default_rng(derive_seed(base_seed, *keys))


def cpu_model() -> str:
    """The CPU's model name and logical core count (``/proc/cpuinfo`` on Linux): bitwise
    reproduction of trained weights holds on the same CPU model and library versions."""
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            found = next((line for line in info if line.startswith("model name")), None)
    except OSError:
        found = None
    if found:
        name = found.split(":", 1)[1].strip()
    return f"{name} ({os.cpu_count()} logical cores)"


def versions() -> dict[str, str]:
    """Versions of Python and of the installed scientific stack (read without importing)."""
    from importlib import metadata

    found = {"python": platform.python_version(), "platform": platform.platform(),
             "cpu": cpu_model()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    found["keras backend"] = os.environ.get("KERAS_BACKEND", "tensorflow")
    return found


def versions_report() -> str:
    """The text of each notebook's closing versions-and-date cell."""
    lines = [f"{key:>14}: {value}" for key, value in versions().items()]
    lines.append(f"{'date (UTC)':>14}: {_dt.datetime.now(_dt.UTC):%Y-%m-%d %H:%M}")
    return "\n".join(lines)
