"""The GPU and second-backend code paths, exercised on the CPU.

- JAX (CPU build, ``requirements-test.txt``): the model's outputs, a smoke training through
  ``utils.training.fit`` (stage 1 and the readout) and ``.keras`` files moving between backends.
- Mixed precision (``mixed_bfloat16``) with XLA compilation, as on a GPU.

Each check runs in a fresh process with its own ``KERAS_BACKEND``: the backend is fixed at the
first ``import keras``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest

from utils import config
from utils.model.rpnet import build_rpnet, head_vector_model, set_readout
from utils.model.variants import BRANCHES

TESTS = Path(__file__).resolve().parent
SHAPE = (8, 16, 16, 2)
TIMEOUT_S = 600


def _run(script: str, backend: str, *args: str) -> dict:
    """Run ``script`` under ``backend`` in a fresh process; returns the JSON it prints last."""
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(script), *args],
                          cwd=config.ROOT, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _inputs(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {b: rng.normal(size=(2, *SHAPE)).astype("float32") for b in BRANCHES}


_JAX_TRAINING = """
    import json, sys
    from pathlib import Path
    import keras
    import numpy as np
    sys.path.insert(0, sys.argv[1])
    from synthetic import CFG, PROFILE, paths_under, write_synthetic_cohort
    from utils.model.compile import compile_rpnet
    from utils.model.rpnet import build_rpnet, head_vector_model, set_readout
    from utils.model.variants import BRANCHES
    from utils.training.curves import read_log
    from utils.training.distribute import setup_device
    from utils.training.fit import fit_variant
    from utils.training.patients import prepare_data
    from utils.training.modelcard import read_model_card
    assert keras.backend.backend() == "jax", keras.backend.backend()
    import os, warnings
    os.environ["TF_CONFIG"] = json.dumps({"cluster": {"worker": ["127.0.0.1:1"]},
                                          "task": {"type": "worker", "index": 0}})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        device = setup_device()
    del os.environ["TF_CONFIG"]
    strategy_warning = any("needs the TensorFlow backend" in str(w.message) for w in caught)
    root = Path(sys.argv[2])
    write_synthetic_cohort(root)
    paths = paths_under(root, "jax_run")
    data = prepare_data(PROFILE, paths)
    result = fit_variant("full", data, PROFILE, CFG, paths, resume=False)
    log = read_log(result.model_path.parent.parent / "logs" / "full" / "training.csv")
    x = dict(np.load(sys.argv[3]))
    out = result.model.predict(x, verbose=0)
    np.savez(root / "jax_outputs.npz", **{k: np.asarray(v) for k, v in out.items()})
    tf_model = keras.saving.load_model(sys.argv[4], safe_mode=True)
    np.savez(root / "tf_model_under_jax.npz",
             **{k: np.asarray(v) for k, v in tf_model.predict(x, verbose=0).items()})
    print(json.dumps({"backend": keras.backend.backend(), "model": str(result.model_path),
                      "loss": log["loss"].tolist(), "pcr_loss": log["pcr_loss"].tolist(),
                      "shapes": {k: list(np.shape(v)) for k, v in out.items()},
                      "readout": read_model_card(result.model_path)["readout"]["features"],
                      "strategy": device.strategy is None, "strategy_warning": strategy_warning}))
"""


@pytest.fixture(scope="module")
def jax_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path, Path]:
    """A smoke training under JAX, plus a TensorFlow-saved model loaded there."""
    root = tmp_path_factory.mktemp("jax")
    np.savez(root / "inputs.npz", **_inputs())
    tf_model = build_rpnet(SHAPE, "full", depth=3, base_filters=4, seed=5)
    set_readout(tf_model, np.linspace(-0.2, 0.2, head_vector_model(tf_model)
                                      .output.shape[-1]), 0.1)
    tf_model.save(root / "tf_model.keras")
    summary = _run(_JAX_TRAINING, "jax", str(TESTS), str(root), str(root / "inputs.npz"),
                   str(root / "tf_model.keras"))
    return summary, root, root / "tf_model.keras"


def test_smoke_training_under_jax(jax_run):
    summary, _, _ = jax_run
    assert summary["backend"] == "jax"
    assert len(summary["loss"]) == 2 and np.isfinite(summary["loss"]).all()
    assert np.isfinite(summary["pcr_loss"]).all()
    assert summary["shapes"] == {"mask_pre": [2, 8, 16, 16, 1], "mask_post": [2, 8, 16, 16, 1],
                                 "pcr": [2, 1]}
    assert summary["readout"]
    assert summary["strategy"] and summary["strategy_warning"]  # TF-only path: a clear warning


def test_keras_files_move_between_backends(jax_run):
    summary, root, tf_path = jax_run
    x = _inputs()
    jax_saved = keras.saving.load_model(summary["model"], safe_mode=True)  # JAX -> TF
    here = jax_saved.predict(x, verbose=0)
    there = np.load(root / "jax_outputs.npz")
    for name in ("mask_pre", "mask_post", "pcr"):
        assert here[name].shape == there[name].shape
        assert here[name].min() >= 0 and here[name].max() <= 1
        np.testing.assert_allclose(here[name], there[name], atol=1e-4)
    original = keras.saving.load_model(tf_path, safe_mode=True).predict(x, verbose=0)
    under_jax = np.load(root / "tf_model_under_jax.npz")  # TF -> JAX
    for name in original:
        np.testing.assert_allclose(original[name], under_jax[name], atol=1e-4)


_MIXED_PRECISION = """
    import json
    import keras
    import numpy as np
    from utils.model.compile import compile_rpnet
    from utils.model.rpnet import build_rpnet, head_vector_model, set_readout
    from utils.model.variants import BRANCHES
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    shape = (8, 16, 16, 2)
    model = compile_rpnet(build_rpnet(shape, "full", depth=3, base_filters=4, seed=1),
                          "full", optimizer="adam", jit_compile=True)
    rng = np.random.default_rng(0)
    x = {b: rng.normal(size=(2, *shape)).astype("float32") for b in ("pre", "post")}
    y = {k: (rng.random((2, *shape[:3], 1)) > 0.7).astype("float32")
         for k in ("mask_pre", "mask_post")}
    y["pcr"] = np.array([[0.0], [1.0]], dtype="float32")
    before = [np.array(w) for w in model.get_weights()]
    logs = [model.train_on_batch(x, y, return_dict=True) for _ in range(2)]
    changed = sum(not np.array_equal(a, np.array(b))
                  for a, b in zip(before, model.get_weights()))
    print(json.dumps({"outputs": {t.name.split("/")[0]: str(t.dtype) for t in model.outputs},
                      "conv_dtype": str(model.get_layer("backbone").get_layer(
                          "enc0_in_conv").compute_dtype),
                      "losses": [float(log["loss"]) for log in logs], "changed": changed,
                      "n_weights": len(before), "jit": str(model.jit_compile)}))
"""


@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_mixed_precision_with_xla(backend: str):
    """bfloat16 compute, float32 outputs, XLA-compiled steps that give finite losses and move
    the weights (what a GPU run does), on the CPU."""
    summary = _run(_MIXED_PRECISION, backend)
    assert summary["conv_dtype"] == "bfloat16"
    assert set(summary["outputs"].values()) == {"float32"}
    assert np.isfinite(summary["losses"]).all()
    assert summary["changed"] > summary["n_weights"] // 2
    assert summary["jit"] == "True"
