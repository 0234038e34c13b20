"""Structure changes must not change results: a fixed smoke run, fingerprinted.

The tiny phantom cohort is preprocessed, the main model trained for two short epochs and
every patient predicted; the cache arrays, the trained weights and the predictions are
hashed and compared with ``tests/fingerprints/smoke_tiny.json``, recorded before a
refactoring. Floating-point results are bit-identical only on the same CPU architecture and
library versions, so the record stores those and the test is skipped (saying why) elsewhere.

Re-record after a change that is *meant* to change results (and say why in the commit):
``RPNET_RECORD_FINGERPRINT=1 RPNET_PROFILE=smoke python -m pytest tests/test_fingerprint.py``.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import tiny_profile

RECORD = Path(__file__).parent / "fingerprints" / "smoke_tiny.json"
ARRAYS = ("image_pre", "image_post", "mask_pre", "mask_post")


def environment() -> dict[str, str]:
    import keras
    import SimpleITK as sitk
    import tensorflow as tf

    return {"machine": platform.machine(), "cpu_features": cpu_features(),
            "python": ".".join(platform.python_version_tuple()[:2]),
            "numpy": np.__version__, "tensorflow": tf.__version__, "keras": keras.__version__,
            "SimpleITK": sitk.Version.VersionString(), "keras_backend": keras.backend.backend()}


def cpu_features() -> str:
    """The vector instruction sets that change oneDNN's arithmetic (and so the last bits)."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split("flags", 1)[1].split("\n", 1)[0].split()
    except (OSError, IndexError):
        return "unknown"
    return " ".join(f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile")
                    if f in flags) or "none"


def _sha(*arrays: np.ndarray) -> str:
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def smoke_run(tiny_cohort: Path, root: Path) -> dict[str, object]:
    """Preprocess, train ``full`` (2 epochs x 2 steps) and predict; the fingerprint."""
    from utils import config
    from utils.inference.batch import predict_runs
    from utils.preprocessing.cache import load_cached
    from utils.preprocessing.run import run_preprocessing
    from utils.training.config import TrainConfig
    from utils.training.patients import prepare_data
    from utils.training.runner import train_all

    profile = tiny_profile()
    paths = config.Paths(tiny_cohort, root / "cache", root / "run", root / "run" / "results")
    run_preprocessing(tiny_cohort, paths.cache_dir, profile, workers=2, progress=False)
    data = prepare_data(profile, paths)
    runs = train_all(profile, ("full",), TrainConfig(epochs=2, steps_per_epoch=2), paths,
                     seeds=1, progress=False, data=data)
    predictions = predict_runs(paths, runs["run"], data)
    cache = {file.stem: _sha(*(load_cached(file)[name] for name in ARRAYS))
             for file in sorted(paths.cache_dir.glob("*.npz"))}
    import keras

    model = keras.saving.load_model(paths.models_dir / "full.keras", compile=False)
    table = predictions.sort_values(["model", "patient_id"])
    values = table[["score", "dice_pre", "dice_post"]].to_numpy(np.float64)
    return {"cache": cache, "weights": _sha(*model.get_weights()),
            "predictions": _sha(values),
            "scores": {pid: float(s) for pid, s in zip(table["patient_id"], table["score"],
                                                       strict=True)}}


def test_a_fixed_smoke_run_gives_the_recorded_cache_weights_and_predictions(tiny_cohort,
                                                                             tmp_path):
    env = environment()
    if os.environ.get("RPNET_RECORD_FINGERPRINT"):
        RECORD.parent.mkdir(exist_ok=True)
        first = smoke_run(tiny_cohort, tmp_path / "record")
        RECORD.write_text(json.dumps({"environment": env, **first}, indent=2, sort_keys=True)
                          + "\n")
    recorded = json.loads(RECORD.read_text())
    if recorded["environment"] != env:
        pytest.skip(f"fingerprint recorded with {recorded['environment']}, this is {env}")
    found = smoke_run(tiny_cohort, tmp_path / "check")  # a fresh run, never the record's
    assert found["cache"] == recorded["cache"], "preprocessed arrays changed"
    assert found["scores"] == recorded["scores"], "predicted pCR scores changed"
    assert found["weights"] == recorded["weights"], "trained weights changed"
    assert found["predictions"] == recorded["predictions"], "scores or Dice changed"


def test_the_record_names_every_patient_of_the_tiny_cohort(tiny_cohort):
    recorded = json.loads(RECORD.read_text())
    patients = set(pd.read_csv(tiny_cohort, dtype={"patient_id": str})["patient_id"])
    assert set(recorded["cache"]) == patients and set(recorded["scores"]) == patients
