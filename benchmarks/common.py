"""Shared benchmark helpers: the machine's own float32 matmul rate and result files."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def matmul_gflops(n: int = 2048, repeats: int = 8) -> float:
    """Best-of float32 matmul GFLOP/s of NumPy's BLAS on this machine (the reference limit)."""
    a = np.random.default_rng(0).random((n, n), dtype=np.float32)
    a @ a  # warm-up
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        a @ a
        best = max(best, 2 * n**3 / (time.perf_counter() - start) / 1e9)
    return best


def machine() -> dict:
    return {"cpu_count": os.cpu_count(), "processor": platform.processor() or platform.machine(),
            "python": platform.python_version()}


def write_result(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    target = RESULTS / f"{name}.json"
    tmp = target.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"machine": machine(), **payload}, indent=2) + "\n")
    tmp.replace(target)
    return target
