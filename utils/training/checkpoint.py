"""Resumable runs: what Keras' own checkpoints leave out, committed after every epoch.

Two ``keras.callbacks.ModelCheckpoint`` callbacks write the models (:func:`model_checkpoints`):
``epoch_NNN.keras`` after every epoch (weights and optimiser state, learning rate included) and
``best_NNN.keras`` when the monitored metric improves (``NNN``: epochs completed). Then
:class:`RunCheckpoint` commits the epoch with ``epoch_NNN.json`` (atomic): the epoch count, the
best epoch, the counters of the stateful callbacks (``ReduceLROnPlateau``, ``EarlyStopping``,
``ModelCheckpoint``: Keras resets them when ``fit`` starts), the dropout seed-generator states
(``.keras`` files omit them) and the training time. A file without its commit is ignored.

:func:`restore` goes back to the newest commit whose files load; a truncated or unreadable
file is skipped with a warning that names it, and the previous commit is used (or none: the
run restarts). The two newest commits are kept.

Why not ``keras.callbacks.BackupAndRestore`` (Keras 3): it backs up the model's weights
(``latest.weights.h5``) and ``{"epoch", "batch"}`` only, and restores them in
``on_train_begin``. A resumed run of this package would then differ from an uninterrupted one:

- the counters of ``ReduceLROnPlateau``, ``EarlyStopping`` and ``ModelCheckpoint`` (best value,
  epochs waited) are not saved, and Keras resets them when ``fit`` starts, so the learning-rate
  halvings, the stopping epoch and the best model would change;
- the dropout layers' seed-generator states are not restored, so the dropout masks after a
  resume would differ (the bit-identical resume of tests/test_resume.py);
- the weights file is overwritten in place and the metadata written after it, with no commit:
  a crash between the two pairs new weights with the old epoch, and ``double_checkpoint`` only
  falls back when loading raises ``OSError``, not on a truncated or mismatched pair;
- it keeps no per-epoch or best model (the best epoch is the run's selected model), deletes
  its backup at ``on_train_end``, and records neither the best epoch nor the training time.

Building on it would mean replacing its save, its load and its file layout, so this module
keeps Keras' ``ModelCheckpoint`` for the model files and adds the commit.
"""

from __future__ import annotations

import json
import re
import time
import warnings
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import keras
import numpy as np

from utils.io import write_json_atomic, write_text_atomic

KEEP = 2  # commits kept: the newest and the one to fall back to
COUNTERS = ("best", "wait", "cooldown_counter", "best_epoch", "stopped_epoch")
_NUMBERED = re.compile(r"(epoch|best)_(\d{3,})\.(keras|json)")


@dataclass
class EpochState:
    """One committed epoch (``epoch_NNN.json``)."""

    epoch: int = 0  # epochs completed
    best_epoch: int = -1  # 0-based epoch of best_NNN.keras
    best_metric: float | None = None
    stopped_early: bool = False
    done: bool = False  # the run finished and its model was saved
    seconds: float = 0.0
    callbacks: dict[str, dict[str, Any]] = field(default_factory=dict)
    seed_states: list[list[int]] = field(default_factory=list)

    @property
    def model_file(self) -> str:
        return f"epoch_{self.epoch:03d}.keras"

    @property
    def best_file(self) -> str:
        return f"best_{self.best_epoch + 1:03d}.keras"

    @property
    def state_file(self) -> str:
        return f"epoch_{self.epoch:03d}.json"

    @classmethod
    def read(cls, path: Path) -> EpochState:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in json.loads(path.read_text()).items() if k in known})

    def write(self, folder: Path) -> Path:
        return write_json_atomic(folder / self.state_file, asdict(self))


def model_checkpoints(folder: Path, monitor: str, mode: str
                      ) -> tuple[keras.callbacks.ModelCheckpoint, keras.callbacks.ModelCheckpoint]:
    """Keras' checkpoints of a run: (best model so far, model after every epoch)."""
    best = keras.callbacks.ModelCheckpoint(str(folder / "best_{epoch:03d}.keras"), monitor,
                                           mode=mode, save_best_only=True)
    latest = keras.callbacks.ModelCheckpoint(str(folder / "epoch_{epoch:03d}.keras"))
    return best, latest


def seed_generator_states(model: keras.Model) -> list[list[int]]:
    """Dropout seed-generator states, in variable order (``.keras`` files omit them)."""
    return [keras.ops.convert_to_numpy(v).astype(np.int64).tolist() for v in model.variables
            if "seed_generator_state" in v.path]


def restore_seed_generator_states(model: keras.Model, states: Sequence[Sequence[int]]) -> None:
    variables = [v for v in model.variables if "seed_generator_state" in v.path]
    if len(variables) != len(states):
        raise ValueError(f"checkpoint has {len(states)} seed-generator states, model "
                         f"{len(variables)}: was the model definition changed?")
    for var, value in zip(variables, states, strict=True):
        var.assign(np.asarray(value, dtype=var.dtype))


class RunCheckpoint(keras.callbacks.Callback):
    """Commits every epoch; restores the tracked callbacks' counters when ``fit`` starts.

    Place it after the callbacks it tracks (``tracked``: name -> callback; ``tracked["best"]``
    is the best-model ``ModelCheckpoint``) and after :func:`model_checkpoints`' two.
    """

    def __init__(self, folder: Path, tracked: Mapping[str, keras.callbacks.Callback],
                 state: EpochState | None = None) -> None:
        super().__init__()
        self.folder, self.tracked = folder, dict(tracked)
        self.state = state or EpochState()
        self._best_before: Any = None
        self._clock = time.perf_counter()

    def on_train_begin(self, logs: dict | None = None) -> None:
        for name, counters in self.state.callbacks.items():
            for key, value in counters.items() if name in self.tracked else ():
                setattr(self.tracked[name], key, value)
        self._clock = time.perf_counter()

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._best_before = self.tracked["best"].best

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        state, best = self.state, self.tracked["best"].best
        if best is not self._best_before:  # ModelCheckpoint saved a new best model
            state.best_epoch, state.best_metric = epoch, float(best)
        now = time.perf_counter()
        state.epoch, state.seconds, self._clock = epoch + 1, state.seconds + now - self._clock, now
        state.stopped_early = bool(self.model.stop_training)  # only EarlyStopping sets it here
        state.callbacks = {name: _counters(cb) for name, cb in self.tracked.items()}
        state.seed_states = seed_generator_states(self.model)
        state.write(self.folder)
        prune(self.folder)


def _counters(callback: keras.callbacks.Callback) -> dict[str, Any]:
    found = {k: getattr(callback, k) for k in COUNTERS if hasattr(callback, k)}
    return {k: v.item() if isinstance(v, np.generic) else v for k, v in found.items()}


def _numbered(folder: Path) -> Iterator[tuple[str, int, Path]]:
    for path in folder.glob("*_*.*"):
        match = _NUMBERED.fullmatch(path.name)
        if match:
            yield match[1], int(match[2]), path


def commits(folder: Path) -> list[Path]:
    """The ``epoch_NNN.json`` files, newest first."""
    return sorted((p for kind, _, p in _numbered(folder) if kind == "epoch"
                   and p.suffix == ".json"), key=lambda p: p.name, reverse=True)


def latest_state(folder: Path) -> EpochState | None:
    """The newest readable commit, quietly (None when there is none)."""
    return next((s for s in map(_read_state, commits(folder)) if s is not None), None)


def prune(folder: Path, keep: int = KEEP) -> None:
    """Delete the files of all but the ``keep`` newest commits (and their best models)."""
    kept = [s for s in map(_read_state, commits(folder)[:keep]) if s is not None]
    needed = {name for s in kept for name in (s.model_file, s.state_file, s.best_file)}
    newest = kept[0].epoch if kept else 0
    for _, number, path in _numbered(folder):
        if path.name not in needed and number <= newest:
            path.unlink(missing_ok=True)


def discard_after(folder: Path, epoch: int) -> None:
    """Delete every file of epochs after ``epoch`` (left by a failed or interrupted epoch)."""
    for _, number, path in _numbered(folder):
        if number > epoch:
            path.unlink(missing_ok=True)


def restore(folder: Path, fresh_model: Callable[[], keras.Model]
            ) -> tuple[keras.Model, EpochState | None]:
    """The model of the newest commit that loads (a fresh one if none does) and its state.

    ``fresh_model`` builds and compiles the untrained model. Unreadable commits or model files
    are reported (a warning naming the file) and skipped; files after the restored epoch are
    deleted."""
    found = commits(folder)
    for path in found:
        state = _read_state(path, warn=True)
        model = fresh_model() if state is not None else None
        if model is not None and _load(model, folder, state):
            discard_after(folder, state.epoch)
            return model, state
    if found:
        warnings.warn(f"no usable checkpoint in {folder}: training restarts from epoch 1",
                      RuntimeWarning, stacklevel=2)
    discard_after(folder, 0)
    return fresh_model(), None


def _read_state(path: Path, warn: bool = False) -> EpochState | None:
    try:
        return EpochState.read(path)
    except (OSError, ValueError, TypeError, AttributeError) as error:  # not a state object
        if warn:
            warnings.warn(f"checkpoint state {path} is unreadable ({type(error).__name__}: "
                          f"{error}); falling back to the previous checkpoint",
                          RuntimeWarning, stacklevel=3)
        return None


def _load(model: keras.Model, folder: Path, state: EpochState) -> bool:
    path = folder / state.model_file
    try:
        with zipfile.ZipFile(folder / state.best_file) as best:  # needed at the end of the run
            if best.testzip() is not None:
                raise zipfile.BadZipFile(f"{folder / state.best_file} is corrupt")
        model.optimizer.build(model.trainable_variables)
        model.load_weights(path)
        restore_seed_generator_states(model, state.seed_states)
    except Exception as error:  # a truncated zip, a missing or foreign file: any failure
        warnings.warn(f"checkpoint {path} does not load ({type(error).__name__}: {error}); "
                      "falling back to the previous checkpoint", RuntimeWarning, stacklevel=3)
        return False
    return True


def trim_log(path: Path, epochs: int) -> None:
    """Keep the header and the rows of the first ``epochs`` epochs of a CSV training log
    (``CSVLogger(append=True)`` then continues it); no row kept: no log (a fresh header)."""
    if not path.exists():
        return
    lines = path.read_text().splitlines(keepends=True)
    first = [line.split(",", 1)[0] for line in lines]
    rows = [line for line, epoch in zip(lines[1:], first[1:], strict=True)
            if epoch.isdigit() and int(epoch) < epochs]
    if rows:
        write_text_atomic(path, "".join(lines[:1] + rows))
    else:
        path.unlink()
