"""Where the training budget goes: one variant's training, timed part by part.

Usage: ``.venv/bin/python benchmarks/bench_training_budget.py --profile demo [--variant full]``

Trains one variant exactly as ``utils.training.runner.train_all`` does (fresh run folder under a
temporary directory, the profile's epochs and the cache of notebook 01), and splits the wall
time into: the first epoch's extra time (graph tracing), steps x the bare step time measured
in the same run (median of the batches after the first epoch), the data loader's share, the
tune-subset evaluation, checkpoint writing, the readout refit (stage 2) and the prediction of
every patient. The rest (Keras' epoch bookkeeping) is reported as ``other``. Also records the
machine's float32 matmul rate. Writes ``benchmarks/results/bench_training_budget_<profile>.json``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import keras
import numpy as np

from benchmarks.common import matmul_gflops, write_result
from utils import config
from utils.inference.batch import predict_runs
from utils.training import fit
from utils.training.checkpoint import RunCheckpoint
from utils.training.config import TrainConfig
from utils.training.dataset import RPNetDataset
from utils.training.fit import fit_variant
from utils.training.patients import prepare_data

TIMED = defaultdict(float)


def _timed(name: str, function):
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            TIMED[name] += time.perf_counter() - start
    return wrapper


class BatchTimer(keras.callbacks.Callback):
    """Wall time of every training batch (loader wait excluded: Keras times the step) and of
    every epoch's batches (from the epoch's start to its last batch: without the tune
    evaluation and the checkpoints, which are timed apart)."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[tuple[int, float]] = []
        self.epochs: list[float] = []
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch, self._epoch_start = epoch, time.perf_counter()

    def on_train_batch_begin(self, batch, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self._last = time.perf_counter()
        self.batches.append((self._epoch, self._last - self._start))

    def on_epoch_end(self, epoch, logs=None):
        self.epochs.append(self._last - self._epoch_start)


def instrument() -> None:
    """Wrap the parts of the Keras training loop whose time we report."""
    checkpoint = keras.callbacks.ModelCheckpoint
    checkpoint.on_epoch_end = _timed("checkpoints", checkpoint.on_epoch_end)
    RunCheckpoint.on_epoch_end = _timed("checkpoints", RunCheckpoint.on_epoch_end)
    fit.refit_readout = _timed("readout_refit", fit.refit_readout)  # as fit_variant calls it
    keras.Model.evaluate = _timed("tune_evaluation", keras.Model.evaluate)  # validation_data
    RPNetDataset.__getitem__ = _timed("loader", RPNetDataset.__getitem__)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="demo", choices=sorted(config.PROFILES))
    parser.add_argument("--variant", default="full")
    args = parser.parse_args()
    profile = config.get_profile(args.profile)
    timer = BatchTimer()
    instrument()
    base = config.get_paths(profile.name)
    with tempfile.TemporaryDirectory() as tmp:
        paths = config.Paths(base.manifest, base.cache_dir, Path(tmp), Path(tmp) / "results")
        start = time.perf_counter()
        data = prepare_data(profile, paths)
        load_s = time.perf_counter() - start
        cfg = TrainConfig().resolved(profile)
        start = time.perf_counter()
        result = fit_variant(args.variant, data, profile, cfg, paths, resume=False,
                             callbacks=[timer])
        fit_s = time.perf_counter() - start
        start = time.perf_counter()
        predict_runs(paths, [result.model_path.stem], data)
        predict_s = time.perf_counter() - start
    steps = [s for epoch, s in timer.batches if epoch > 0]
    bare = float(np.median(steps))
    n_steps = len(timer.batches)
    first_extra = timer.epochs[0] - bare * sum(e == 0 for e, _ in timer.batches)
    parts = {"graph_tracing_first_epoch": first_extra, "steps_x_bare_step": n_steps * bare,
             "tune_evaluation": TIMED["tune_evaluation"], "checkpoints": TIMED["checkpoints"],
             "readout_refit": TIMED["readout_refit"]}
    parts["other"] = fit_s - sum(parts.values())
    payload = {"profile": profile.name, "variant": args.variant, "epochs": cfg.epochs,
               "steps_per_epoch": n_steps // cfg.epochs, "batch_size": cfg.batch_size,
               "load_cache_s": load_s, "fit_s": fit_s, "predict_all_patients_s": predict_s,
               "epoch_wall_s": timer.epochs, "bare_step_s": bare,
               "samples_per_s_bare": cfg.batch_size / bare,
               "loader_s_total": TIMED["loader"], "parts_s": parts,
               "matmul_gflops": matmul_gflops()}
    path = write_result(f"bench_training_budget_{profile.name}", payload)
    print(f"{args.variant}, {profile.name}: fit {fit_s:.1f} s for {n_steps} steps; bare step "
          f"{bare:.3f} s ({cfg.batch_size / bare:.1f} samples/s); epochs "
          + ", ".join(f"{e:.1f}" for e in timer.epochs) + " s")
    for name, seconds in parts.items():
        print(f"  {name:>26}: {seconds:6.1f} s ({100 * seconds / fit_s:4.1f}%)")
    print(f"  loader (inside the steps' wall time, one thread): {TIMED['loader']:.1f} s; "
          f"predict all patients: {predict_s:.1f} s; matmul {payload['matmul_gflops']:.0f} "
          f"GFLOP/s; wrote {path.name}")


if __name__ == "__main__":
    main()
