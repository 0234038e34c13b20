"""Multi-worker training, really run: two worker processes on this machine.

``TF_CONFIG`` names two loopback ports (127.0.0.1 only); each worker runs the same script,
which creates ``MultiWorkerMirroredStrategy`` first (``utils.training.distribute.setup_device``)
and then trains the smoke model through ``utils.training.fit.fit_variant`` (two epochs of two
steps, the readout refit) into its own run folder. Both must finish within a bounded time,
report two replicas in sync, write their checkpoints and end with identical weights
(gradients, batch-norm statistics and the readout are all shared).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest

from utils import config

TESTS = Path(__file__).resolve().parent
TIMEOUT_S = 300

_WORKER = """
    import json, sys
    from pathlib import Path
    sys.path.insert(0, sys.argv[1])
    from utils.training.distribute import setup_device
    from utils.training.fit import fit_variant
    device = setup_device()  # first: the strategy configures TensorFlow at start-up
    from synthetic import CFG, PROFILE, paths_under
    from utils.training.patients import prepare_data
    root, index = Path(sys.argv[2]), int(sys.argv[3])
    paths = paths_under(root, f"worker{index}")
    result = fit_variant("full", prepare_data(PROFILE, paths), PROFILE,
                         CFG, paths, resume=False)
    print(json.dumps({"replicas": device.replicas, "model": str(result.model_path),
                      "epochs": result.epochs_run}))
"""


def _free_loopback_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _launch(root: Path) -> list[dict]:
    ports = _free_loopback_ports(2)
    workers = [f"127.0.0.1:{port}" for port in ports]
    procs = []
    for index in range(2):
        env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "2",
               "TF_CONFIG": json.dumps({"cluster": {"worker": workers},
                                        "task": {"type": "worker", "index": index}})}
        procs.append(subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(_WORKER), str(TESTS), str(root), str(index)],
            cwd=config.ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True))
    results = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=TIMEOUT_S)
            assert proc.returncode == 0, err[-4000:]
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for proc in procs:  # a hung collective must not outlive the test
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return results


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict], Path]:
    if keras.backend.backend() != "tensorflow":
        pytest.skip("MultiWorkerMirroredStrategy needs the TensorFlow backend")
    from tests.synthetic import write_synthetic_cohort

    root = tmp_path_factory.mktemp("multiworker")
    write_synthetic_cohort(root)
    return _launch(root), root


def test_two_workers_train_in_sync_and_agree(two_workers):
    import utils.model.rpnet  # noqa: F401  (registers the custom layers for loading)

    results, root = two_workers
    assert [r["replicas"] for r in results] == [2, 2]
    assert [r["epochs"] for r in results] == [2, 2]
    for index in range(2):
        state = json.loads((root / f"worker{index}" / "checkpoints" / "full" /
                            "epoch_002.json").read_text())
        assert state["done"] and state["epoch"] == 2
    chief, other = (keras.saving.load_model(r["model"], compile=False) for r in results)
    assert len(chief.weights) == len(other.weights) > 0
    for a, b in zip(chief.weights, other.weights, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=a.path)
