"""Determinism and resume of utils.training.fit.fit_variant, in fresh processes and from bad files.

A run of 4 epochs x 3 shuffled, augmented batches is trained in three fresh processes: two
uninterrupted, one killed (``os._exit``, no clean-up) in the middle of epoch 3 and then
resumed in a fourth. All end with bit-identical weights and logs. In-process: a truncated
model file or a garbage state file makes the resume fall back to the previous commit (with a
warning naming the file); with no usable commit the run restarts, and ends the same.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest

from tests.synthetic import PROFILE, paths_under
from utils import config
from utils.training.config import TrainConfig, run_seed
from utils.training.curves import read_log
from utils.training.dataset import RPNetDataset
from utils.training.fit import FitResult, fit_variant
from utils.training.modelcard import read_model_card
from utils.training.patients import TrainData, prepare_data

TESTS = Path(__file__).resolve().parent
# monitor_mode "max" on a falling loss: every epoch after the first is a plateau, so the
# learning rate halves after epoch 3 and the best model stays epoch 1's only if the counters
# of ReduceLROnPlateau, EarlyStopping and ModelCheckpoint survive the kill
LONG = {"epochs": 4, "steps_per_epoch": 3, "pcr_fraction": 0.5, "plateau_patience": 2,
        "early_stopping_patience": 5, "monitor_mode": "max"}
KILL_AT = [2, 1]  # 0-based epoch and batch: after two committed epochs, mid-epoch
SHORT = TrainConfig(epochs=3, steps_per_epoch=2, plateau_patience=1, readout=False)

_RUN = """
    import json, os, sys
    from pathlib import Path
    import keras
    sys.path.insert(0, sys.argv[1])
    from synthetic import PROFILE, paths_under
    from utils.training.config import TrainConfig, run_seed
    from utils.training.curves import read_log
    from utils.training.fit import FitResult, fit_variant
    from utils.training.patients import prepare_data
    paths = paths_under(Path(sys.argv[2]), sys.argv[3])
    kill = json.loads(sys.argv[5])

    class Kill(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_end(self, batch, logs=None):
            if [self.epoch, batch] == kill:
                os._exit(17)  # as a kill: no clean-up, no flush

    result = fit_variant("full", prepare_data(PROFILE, paths), PROFILE,
                         TrainConfig(**json.loads(sys.argv[4])), paths,
                         callbacks=[Kill()] if kill else ())
    print(json.dumps({"epochs_run": result.epochs_run, "interrupted": result.interrupted}))
"""


def _start(root: Path, run: str, kill: list[int] | None = None) -> subprocess.Popen:
    args = [str(TESTS), str(root), run, json.dumps(LONG), json.dumps(kill)]
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(_RUN), *args],
                            cwd=config.ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _finish(process: subprocess.Popen) -> tuple[int, dict | None]:
    out, err = process.communicate(timeout=600)
    if process.returncode not in (0, 17):
        raise AssertionError(err[-4000:])
    return process.returncode, json.loads(out.splitlines()[-1]) if process.returncode == 0 else None


def _weights(path: Path) -> list[np.ndarray]:
    return [np.asarray(w) for w in keras.saving.load_model(path, compile=False).get_weights()]


def _assert_same_weights(a: Path, b: Path) -> None:
    x, y = _weights(a), _weights(b)
    assert len(x) == len(y) > 0
    for u, v in zip(x, y, strict=True):
        np.testing.assert_array_equal(u, v)



@pytest.fixture(scope="module")
def fresh(cohort: Path) -> dict:
    """Runs a, b (uninterrupted) and killed in parallel processes, then resumed in a fourth."""
    procs = {"a": _start(cohort, "a"), "b": _start(cohort, "b"),
             "killed": _start(cohort, "killed", KILL_AT)}
    out = {name: _finish(p) for name, p in procs.items()}
    ckpt = paths_under(cohort, "killed").checkpoints_dir / "full"
    out["commits_after_kill"] = sorted(p.name for p in ckpt.glob("epoch_*.json"))
    out["resumed"] = _finish(_start(cohort, "killed"))
    return out


def test_the_test_run_has_several_shuffled_batches_per_epoch(cohort: Path):
    data = prepare_data(PROFILE, paths_under(cohort, "probe"))
    ds = RPNetDataset(data.arrays, data.ids("fit"), "full", 4, training=True,
                      seed=run_seed(PROFILE), pcr_fraction=0.5,
                      steps_per_epoch=LONG["steps_per_epoch"])
    orders = [ds.epoch_order(e) for e in range(1, LONG["epochs"] + 1)]
    assert len(ds) == 3 and all(len(o) == 12 for o in orders)
    assert len({tuple(o) for o in orders}) == len(orders)  # every epoch its own order
    assert all(len(set(o)) < len(o) for o in orders)  # pCR patients repeated (balanced)


def test_resume_after_a_kill_equals_an_uninterrupted_run(cohort: Path, fresh: dict):
    assert fresh["killed"] == (17, None)
    assert fresh["commits_after_kill"] == ["epoch_001.json", "epoch_002.json"]
    assert fresh["resumed"] == (0, {"epochs_run": 2, "interrupted": False})
    a, resumed = paths_under(cohort, "a"), paths_under(cohort, "killed")
    for path in ("checkpoints/full/epoch_004.keras", "models/full.keras"):
        _assert_same_weights(a.run_dir / path, resumed.run_dir / path)
    assert a.log_csv("full").read_text() == resumed.log_csv("full").read_text()
    log = read_log(a.log_csv("full"))
    assert list(log["epoch"]) == [0, 1, 2, 3] and log["val_loss"].is_monotonic_decreasing
    lr = log["learning_rate"].to_numpy()
    assert lr[0] == lr[1] == lr[2] == 2 * lr[3]  # halved after epoch 3, past the kill
    assert read_model_card(resumed.models_dir / "full.keras")["best_epoch"] == 0


def test_two_fresh_processes_give_identical_weights(cohort: Path, fresh: dict):
    assert fresh["a"] == fresh["b"] == (0, {"epochs_run": 4, "interrupted": False})
    a, b = paths_under(cohort, "a"), paths_under(cohort, "b")
    _assert_same_weights(a.models_dir / "full.keras", b.models_dir / "full.keras")
    assert a.log_csv("full").read_text() == b.log_csv("full").read_text()


# --------------------------------------------------------------------------- bad files
@pytest.fixture(scope="module")
def stopped(cohort: Path) -> tuple[TrainData, Path]:
    """A 3-epoch run stopped after 2 epochs (commits 1 and 2), and its clean resume."""
    paths = paths_under(cohort, "stopped")
    data = prepare_data(PROFILE, paths)
    first = fit_variant("full", data, PROFILE, SHORT, paths, stop_after=2)
    assert first.interrupted and first.epochs_run == 2
    clean = _copy(cohort, "stopped", "clean")
    with open(clean.log_csv("full"), "a") as handle:  # logged, never committed
        handle.write("2" + ",0.5" * 15 + "\n")
    again = fit_variant("full", data, PROFILE, SHORT, clean)
    assert again.epochs_run == 1 and not again.interrupted
    assert list(read_log(clean.log_csv("full"))["epoch"]) == [0, 1, 2]
    return data, clean.checkpoints_dir / "full" / "epoch_003.keras"


def _copy(cohort: Path, source: str, target: str) -> config.Paths:
    shutil.copytree(cohort / source, cohort / target)
    return paths_under(cohort, target)


def _resume_case(cohort: Path, stopped: tuple, name: str, damage: dict[str, bytes]
                 ) -> tuple[FitResult, list[str], Path]:
    data, reference = stopped
    paths = _copy(cohort, "stopped", name)
    folder = paths.checkpoints_dir / "full"
    for file, content in damage.items():
        (folder / file).write_bytes(content)
    with pytest.warns(RuntimeWarning) as caught:
        result = fit_variant("full", data, PROFILE, SHORT, paths)
    _assert_same_weights(reference, folder / "epoch_003.keras")
    return result, [str(w.message) for w in caught], folder


def _truncated(path: Path) -> bytes:
    content = path.read_bytes()
    return content[:len(content) // 2]


def test_a_truncated_model_file_falls_back_to_the_previous_commit(cohort: Path, stopped):
    model = cohort / "stopped" / "checkpoints" / "full" / "epoch_002.keras"
    result, messages, _ = _resume_case(cohort, stopped, "truncated",
                                       {"epoch_002.keras": _truncated(model)})
    assert result.epochs_run == 2  # epoch 2 again, from commit 1
    assert any(str(model.name) in m and "previous checkpoint" in m for m in messages)


def test_a_garbage_state_file_falls_back_to_the_previous_commit(cohort: Path, stopped):
    result, messages, _ = _resume_case(cohort, stopped, "garbage",
                                       {"epoch_002.json": b"{\"epoch\": 2, \x00garbage"})
    assert result.epochs_run == 2
    assert any("epoch_002.json" in m and "unreadable" in m for m in messages)


def test_without_a_usable_commit_the_run_restarts(cohort: Path, stopped):
    model = cohort / "stopped" / "checkpoints" / "full" / "epoch_001.keras"
    result, messages, folder = _resume_case(cohort, stopped, "restart", {
        "epoch_002.json": b"", "epoch_001.keras": _truncated(model)})
    assert result.epochs_run == 3 and not result.interrupted
    assert any("epoch_002.json" in m for m in messages)
    assert any("epoch_001.keras" in m for m in messages)
    assert any("restarts from epoch 1" in m for m in messages)
    assert sorted(p.name for p in folder.glob("epoch_*.json")) == ["epoch_002.json",
                                                                   "epoch_003.json"]
