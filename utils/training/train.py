"""Training of 3D RP-Net: configuration, the resumable fit and training all variants.

Data, split and balanced sampling: :mod:`utils.training.dataset`; augmentation: :mod:`utils.training.augment`;
the model card: :mod:`utils.training.modelcard`; prediction of every patient: :mod:`utils.inference.batch`;
devices, precision and distribution: :mod:`utils.training.distribute`.

Two stages. Stage 1 (:func:`fit_variant`) trains the network: segmentation of both exams and,
with the default tumour-guided head, the pCR unit on features the pCR loss cannot change
(``TrainConfig.pcr_gradient=False``: the backbone learns from the masks alone). Stage 2
(:func:`refit_readout`, :mod:`utils.training.readout`) refits the pCR unit in closed form: a logistic
regression on the head vectors of every training patient, feature set and penalty chosen by
5-fold cross-validation over the whole training cohort (``results/folds.csv``). Training
patients' scores in ``predictions.csv`` are their out-of-fold readout scores.

Stage 1 is one ``model.fit`` with Keras' own callbacks. The tune subset of the training cohort
(:func:`utils.training.dataset.make_split`) is its ``validation_data``: Keras names its metrics ``val_*``
(columns of ``logs/<run>/training.csv``), although no validation-cohort patient is involved.

Seeds: :func:`train_all` trains ``Profile.seeds`` replicas of the main model and of the
ablations that test the paper's claims (:data:`utils.model.rpnet.SEEDED_VARIANTS`; run names
``full``, ``full_seed1``, ...); replica ``k`` draws its initialisation, sampling and
augmentation from its own seed (:func:`replica_seed`), the split and folds stay the same.

Optimiser: Adam, learning rate from the profile (1e-3), halved by ``ReduceLROnPlateau`` when
the tune loss has not improved for ``plateau_patience`` epochs. The authors used SGD, lr 1e-2,
momentum 0.9, halved on plateau: ``TrainConfig.authors()``. Adam converges in the few epochs a
CPU budget allows; SGD at 1e-2 needs many more. The best model (``ModelCheckpoint``) is the
epoch with the lowest ``val_loss`` (the weighted training loss on the tune subset: smoother
than the AUC of a few dozen patients, and it covers both tasks).

Budget (2 CPU cores): ``benchmarks/bench_training_budget.py`` splits one demo training into
steps x the bare step time, graph tracing, tune evaluation, checkpoints and the readout refit
(README, "Speed").

Checkpoints (:mod:`utils.training.checkpoint`): after every epoch the model and optimiser, then a commit
with the callbacks' counters and the dropout seed-generator states. :func:`fit_variant`
resumes from the newest commit that loads; the batches of an epoch depend only on
``(seed, epoch)`` (:class:`utils.training.dataset.EpochSync`, Keras' own shuffling off), so with op
determinism on a resumed run ends with the same weights as an uninterrupted one on CPU.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pandas as pd

from utils.config import Paths, Profile, as_profile, get_paths
from utils.inference.batch import predict_variant, write_predictions
from utils.io import atomic_path, write_atomic, write_json_atomic
from utils.measures import auc_or_nan
from utils.model.rpnet import (
    ALL_VARIANTS,
    SEEDED_VARIANTS,
    VARIANTS,
    build_rpnet,
    compile_rpnet,
    head_groups,
    head_vector_model,
    set_readout,
    variant_of,
)
from utils.progress import progress_bar
from utils.repro import derive_seed, set_seeds
from utils.training.augment import AugmentConfig
from utils.training.checkpoint import (
    EpochState,
    RunCheckpoint,
    latest_state,
    model_checkpoints,
    restore,
    trim_log,
)
from utils.training.dataset import (
    EpochSync,
    RPNetDataset,
    TrainData,
    check_no_leak,
    prepare_data,
    stacked_inputs,
)
from utils.training.distribute import DeviceSetup, setup_device
from utils.training.modelcard import model_card, run_name
from utils.training.readout import Readout, fit_readout


# --------------------------------------------------------------------------- configuration
@dataclass(frozen=True)
class TrainConfig:
    """Training settings that are not part of the profile (``None``: take the profile's)."""

    epochs: int | None = None
    batch_size: int | None = None
    learning_rate: float | None = None
    steps_per_epoch: int | None = None  # None: one pass over the balanced epoch
    optimizer: str = "adam"  # "adam" | "sgd" (momentum 0.9)
    schedule: str = "plateau"  # "plateau" | "cosine" | "constant"
    plateau_patience: int = 3
    plateau_factor: float = 0.5
    min_learning_rate: float = 1e-5
    monitor: str = "val_loss"  # a log key; val_*: the tune subset (Keras' validation_data)
    monitor_mode: str = "min"
    early_stopping_patience: int | None = None
    pcr_fraction: float | None = 0.5  # None: natural class frequencies
    tune_fraction: float = 0.2
    loss_weights: Mapping[str, float] | None = None  # None: the model's (pcr 1, masks 0.2)
    dropout: float = 0.3
    comparison: str = "subtract"  # how joins compare post with pre (utils.model.rpnet.build_rpnet)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    prior_correction: bool = True
    mixed_precision: bool | str = "auto"  # "auto": bf16 on GPU only
    deterministic: bool | None = None  # None: op determinism on CPU, off on GPU (XLA)
    tensorboard: bool = False
    workers: int = 1  # PyDataset threads
    seed: int = 0  # replica: 0 uses the profile seed; k > 0 derives new init/sampling seeds
    readout: bool = True  # stage 2: cross-validated logistic refit of the pcr unit
    pcr_gradient: bool = False  # let the pCR loss train the backbone (utils.model.rpnet)

    @classmethod
    def authors(cls, **changes: Any) -> TrainConfig:
        """The authors' optimiser: SGD, lr 1e-2, momentum 0.9, halved on plateau."""
        return cls(**{"optimizer": "sgd", "learning_rate": 1e-2, "schedule": "plateau",
                      **changes})

    def resolved(self, profile: Profile) -> TrainConfig:
        """A copy with epochs, batch size and learning rate filled from the profile."""
        return replace(self, epochs=self.epochs or profile.epochs,
                       batch_size=self.batch_size or profile.batch_size,
                       learning_rate=self.learning_rate or profile.learning_rate)


# --------------------------------------------------------------------------- fit
@dataclass
class FitResult:
    """Outcome of :func:`fit_variant`."""

    variant: str
    model_path: Path
    log_path: Path
    best_epoch: int
    best_metric: float | None
    epochs_run: int
    seconds: float
    interrupted: bool = False
    skipped: bool = False  # already complete, nothing trained
    model: keras.Model | None = field(default=None, repr=False)  # best weights, in memory


def build_compiled(variant: str, profile: Profile, cfg: TrainConfig, shape: Sequence[int],
                   device: DeviceSetup) -> keras.Model:
    """A variant built and compiled as training does, under the device's strategy."""
    with device.scope():
        model = build_rpnet(tuple(shape), variant, depth=profile.depth,
                            base_filters=profile.base_filters, dropout=cfg.dropout,
                            comparison=cfg.comparison, seed=replica_seed(profile, cfg.seed),
                            pcr_gradient=cfg.pcr_gradient,
                            sync_batchnorm=device.strategy is not None)
        compile_rpnet(model, variant, cfg.learning_rate, loss_weights=cfg.loss_weights,
                      optimizer=cfg.optimizer, jit_compile=device.jit_compile)
    return model


def replica_seed(profile: Profile, replica: int = 0) -> int:
    """Seed of one training replica: the profile's seed for replica 0, derived otherwise."""
    return profile.seed if replica == 0 else derive_seed(profile.seed, "replica", replica)


def _run_seed(profile: Profile, replica: int = 0) -> int:
    """Sampling and augmentation seed: the same for every variant (a controlled ablation)."""
    return derive_seed(replica_seed(profile, replica), "train")


def _reset_run(ckpt_dir: Path, log_path: Path) -> None:
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    log_path.unlink(missing_ok=True)


def cosine_learning_rate(cfg: TrainConfig, epoch: int) -> float:
    """Learning rate of ``epoch`` (0-based) under the cosine schedule, floored at the minimum."""
    cos = 0.5 * (1 + math.cos(math.pi * epoch / max(cfg.epochs, 1)))
    return max(cfg.min_learning_rate, cfg.learning_rate * cos)


def schedule_callbacks(cfg: TrainConfig) -> dict[str, keras.callbacks.Callback]:
    """Keras' learning-rate schedule and (if configured) early stopping, by name.

    ``plateau``: ``ReduceLROnPlateau`` (any decrease of the monitored metric is an
    improvement: ``min_delta=0``, no cooldown); ``cosine``: ``LearningRateScheduler``."""
    found: dict[str, keras.callbacks.Callback] = {}
    if cfg.schedule == "plateau":
        found["plateau"] = keras.callbacks.ReduceLROnPlateau(
            cfg.monitor, factor=cfg.plateau_factor, patience=cfg.plateau_patience,
            mode=cfg.monitor_mode, min_delta=0, cooldown=0, min_lr=cfg.min_learning_rate)
    elif cfg.schedule == "cosine":
        found["cosine"] = keras.callbacks.LearningRateScheduler(
            lambda epoch, lr: cosine_learning_rate(cfg, epoch))
    elif cfg.schedule != "constant":
        raise ValueError(f"unknown schedule {cfg.schedule!r}; choose plateau, cosine or constant")
    if cfg.early_stopping_patience is not None:
        found["stopping"] = keras.callbacks.EarlyStopping(
            cfg.monitor, patience=cfg.early_stopping_patience, mode=cfg.monitor_mode)
    return found


class _Progress(keras.callbacks.Callback):
    """One tqdm update per epoch, with the monitored metric and the tune Dice and AUC."""

    def __init__(self, bar: Any, monitor: str) -> None:
        super().__init__()
        self.bar, self.monitor = bar, monitor

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.bar.update(1)
        self.bar.set_postfix_str(_postfix(logs or {}, self.monitor), refresh=False)


def _postfix(logs: Mapping[str, float], monitor: str) -> str:
    keys = [monitor, "val_pcr_auc", "val_mask_pre_dice", "val_mask_post_dice"]
    short = {"val_loss": "loss", "val_pcr_auc": "auc", "val_mask_pre_dice": "dice_pre",
             "val_mask_post_dice": "dice_post"}
    return " ".join(f"{short.get(k, k)}={logs[k]:.3f}" for k in dict.fromkeys(keys) if k in logs)


def _callbacks(cfg: TrainConfig, ckpt_dir: Path, log_path: Path, state: EpochState,
               train: RPNetDataset, tensorboard_dir: Path, progress: Any
               ) -> tuple[list[keras.callbacks.Callback], RunCheckpoint]:
    """Schedule, early stopping, checkpoints, commit, CSV log, TensorBoard, progress: in the
    order Keras calls them at the end of an epoch (the commit after what it records)."""
    tracked = schedule_callbacks(cfg)
    tracked["best"], latest = model_checkpoints(ckpt_dir, cfg.monitor, cfg.monitor_mode)
    commit = RunCheckpoint(ckpt_dir, tracked, state)
    callbacks = [EpochSync(train), *tracked.values(), latest, commit,
                 keras.callbacks.CSVLogger(str(log_path), append=True)]
    if cfg.tensorboard and keras.backend.backend() == "tensorflow":
        try:
            callbacks.append(keras.callbacks.TensorBoard(str(tensorboard_dir)))
        except ImportError as error:  # tensorboard not installed
            print(f"TensorBoard logging off: {error}", file=sys.stderr)
    if progress is not None:
        callbacks.append(_Progress(progress, cfg.monitor))
    return callbacks, commit


def _fresh_model(variant: str, profile: Profile, cfg: TrainConfig, data: TrainData,
                 device: DeviceSetup) -> keras.Model:
    """Seeds set, the untrained model built and compiled (op determinism on CPU by default)."""
    deterministic = cfg.deterministic if cfg.deterministic is not None else not device.gpus
    set_seeds(profile.seed, deterministic=deterministic)
    return build_compiled(variant, profile, cfg, data.input_shape, device)


def fit_variant(variant: str, data: TrainData, profile: Profile | str | None = None,
                config: TrainConfig | None = None, paths: Paths | None = None, *,
                resume: bool = True, progress: Any = None, stop_after: int | None = None,
                callbacks: Sequence[keras.callbacks.Callback] = ()) -> FitResult:
    """Train one variant on the fit subset with one ``model.fit``, the tune subset as its
    ``validation_data`` (checkpoint selection, plateaus, early stopping).

    Resumes from ``runs/<profile>/checkpoints/<run>/`` (:mod:`utils.training.checkpoint`) when a
    checkpoint exists (``resume=False`` starts over). ``stop_after`` ends this call after that
    many epochs, leaving the checkpoint as an interruption would (for tests and time-sliced
    runs). ``progress``: an optional tqdm bar (updated once per epoch); ``callbacks``: more
    Keras callbacks, called last. The best epoch's model, with its refitted readout, is
    written to ``runs/<profile>/models/<run>.keras`` when the run completes.
    """
    prof = as_profile(profile)
    cfg = (config or TrainConfig()).resolved(prof)
    paths = paths or get_paths(prof.name)
    run = run_name(variant, cfg.seed)
    ckpt_dir, log_path = paths.checkpoint_dir(run), paths.log_csv(run)
    model_path = paths.model_file(run)
    if not resume:
        _reset_run(ckpt_dir, log_path)
    done = latest_state(ckpt_dir)
    if done is not None and done.done and model_path.exists():
        return FitResult(variant, model_path, log_path, done.best_epoch, done.best_metric, 0,
                         done.seconds, skipped=True)
    fit_ids, tune_ids = data.ids("fit"), data.ids("tune")
    check_no_leak(data, fit_ids + tune_ids)
    device = setup_device(cfg.mixed_precision)  # first: a strategy configures TF at start-up
    model, state = restore(ckpt_dir, lambda: _fresh_model(variant, prof, cfg, data, device))
    state = state or EpochState()
    first = state.epoch
    trim_log(log_path, first)
    train = RPNetDataset(data.arrays, fit_ids, variant, cfg.batch_size * device.replicas,
                         training=True, seed=_run_seed(prof, cfg.seed), augment=cfg.augment,
                         pcr_fraction=cfg.pcr_fraction, steps_per_epoch=cfg.steps_per_epoch,
                         workers=cfg.workers)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    keras_callbacks, commit = _callbacks(cfg, ckpt_dir, log_path, state, train,
                                         paths.logs_dir / run / "tb", progress)
    end = cfg.epochs if stop_after is None else min(cfg.epochs, first + stop_after)
    if first < end and not state.stopped_early:
        model.fit(train, validation_data=stacked_inputs(data, tune_ids, variant),
                  validation_batch_size=cfg.batch_size * device.replicas, epochs=end,
                  initial_epoch=first, callbacks=[*keras_callbacks, *callbacks],
                  shuffle=False, verbose=0)
    state = commit.state
    interrupted = state.epoch < cfg.epochs and not state.stopped_early
    if not interrupted:
        model.load_weights(ckpt_dir / state.best_file)  # keeps the traced functions
        readout = refit_readout(model, data, cfg) if cfg.readout else None
        _finish(variant, model, ckpt_dir, state, model_path, prof, data, cfg, readout, paths)
    return FitResult(variant, model_path, log_path, state.best_epoch, state.best_metric,
                     state.epoch - first, state.seconds, interrupted=interrupted,
                     model=None if interrupted else model)


def _finish(variant: str, model: keras.Model, ckpt_dir: Path, state: EpochState,
            model_path: Path, profile: Profile, data: TrainData, cfg: TrainConfig,
            readout: Readout | None, paths: Paths) -> None:
    """Save the selected model (with its refitted readout) and its card; mark the run done."""
    with atomic_path(model_path) as tmp:
        model.save(tmp)
    card = model_card(variant, profile, data, cfg, best_epoch=state.best_epoch,
                      best_metric=state.best_metric, epochs=state.epoch, readout=readout)
    write_json_atomic(model_path.with_suffix(".json"), card)
    if readout is not None:
        ids = data.ids(cohort="training")
        oof = pd.DataFrame({"patient_id": ids, "oof_score": readout.oof})
        target = paths.readout_csv(model_path.stem)
        write_atomic(target, lambda tmp: oof.to_csv(tmp, index=False))
    state.done = True
    state.write(ckpt_dir)


# --------------------------------------------------------------------------- stage 2
def head_vectors(model: keras.Model, data: TrainData, ids: Sequence[str], variant: str,
                 batch_size: int = 8) -> np.ndarray:
    """The head vector (input of the final pcr unit) of each patient, unaugmented."""
    x, _ = stacked_inputs(data, ids, variant)
    features = head_vector_model(model).predict(x, batch_size=batch_size, verbose=0)
    return np.asarray(features, dtype=np.float64)


def refit_readout(model: keras.Model, data: TrainData, cfg: TrainConfig) -> Readout:
    """Stage 2: cross-validated logistic refit of the pcr unit on every training patient
    (:mod:`utils.training.readout`); the fitted weights are written into ``model``."""
    ids = data.ids(cohort="training")
    check_no_leak(data, ids)
    table = data.patients.set_index("patient_id").loc[ids]
    readout = fit_readout(head_vectors(model, data, ids, variant_of(model), cfg.batch_size),
                          table["pcr"].to_numpy(int), table["fold"].to_numpy(int),
                          head_groups(model))
    set_readout(model, readout.coef, readout.intercept)
    return readout



# --------------------------------------------------------------------------- all variants
def _bar(total: int, desc: str, enabled: bool) -> Any:
    """One bar per run, updated per epoch (one final line in stored notebooks)."""
    return progress_bar(total, desc, enabled, leave=True, ascii=True, mininterval=5.0,
                        file=sys.stdout, dynamic_ncols=False, ncols=100)


def describe_run(data: TrainData, profile: Profile, cfg: TrainConfig) -> str:
    """Cohort sizes, split and training budget in one line."""
    sizes = ", ".join(f"{len(data.ids(cohort=c))} {c.split('_')[0]}" for c in
                      ("training", "internal_validation", "external_validation"))
    fit = data.ids("fit")
    probe = RPNetDataset(data.arrays, fit, "full", cfg.batch_size, training=True,
                         pcr_fraction=cfg.pcr_fraction, steps_per_epoch=cfg.steps_per_epoch)
    return (f"{profile.name}: {sizes} patients; fit {len(fit)}, tune {len(data.ids('tune'))}; "
            f"{cfg.epochs} epochs x {len(probe)} steps x batch {cfg.batch_size}"
            + (f"; skipped {len(data.skipped)}" if data.skipped else ""))


def train_all(profile: Profile | str | None = None, variants: Sequence[str] = ALL_VARIANTS,
              config: TrainConfig | None = None, paths: Paths | None = None, *,
              seeds: int | Mapping[str, int] | None = None, resume: bool = True,
              progress: bool = True) -> pd.DataFrame:
    """Train the main model and every ablation with one split and one budget; predict all.

    ``seeds``: replicas per variant (an int for all, or a mapping variant -> count; absent
    variants get one); default: ``profile.seeds`` for :data:`SEEDED_VARIANTS`, one otherwise.
    Per run: one progress bar (one line) and one summary line. Writes
    ``models/<run>.keras``, ``logs/<run>/training.csv``, ``predicted_masks/``,
    ``results/split.csv``, ``results/folds.csv`` and ``results/predictions.csv`` (every run
    of this call, updated after each run); returns the predictions table.
    Completed runs are not retrained (``resume=False`` retrains everything).
    """
    prof = as_profile(profile)
    cfg = (config or TrainConfig()).resolved(prof)
    paths = paths or get_paths(prof.name)
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variants {unknown}; choose from {ALL_VARIANTS}")
    data = prepare_data(prof, paths, cfg.tune_fraction)
    print(describe_run(data, prof, cfg))
    if data.skipped:
        print(f"  skipped (no usable cache): {', '.join(sorted(data.skipped)[:12])}"
              + (" ..." if len(data.skipped) > 12 else ""))
    if seeds is None:
        seeds = dict.fromkeys(SEEDED_VARIANTS, prof.seeds)
    runs = []
    for variant in variants:
        count = seeds if isinstance(seeds, int) else seeds.get(variant, 1)
        for replica in range(count):
            _train_and_predict(variant, data, prof, replace(cfg, seed=replica), paths, resume,
                               progress)
            runs.append(run_name(variant, replica))
            write_predictions(paths, runs)  # after each run: partial results survive a crash
    return write_predictions(paths, runs)


def _train_and_predict(variant: str, data: TrainData, prof: Profile, cfg: TrainConfig,
                       paths: Paths, resume: bool, progress: bool) -> None:
    start = time.perf_counter()
    run = run_name(variant, cfg.seed)
    with _bar(cfg.epochs, f"{run:>18}", progress) as bar:
        result = fit_variant(variant, data, prof, cfg, paths, resume=resume, progress=bar)
    table_path = paths.run_predictions_csv(run)
    if not (result.skipped and table_path.exists()):
        table = predict_variant(variant, result.model or result.model_path, data, paths,
                                cfg.batch_size, cfg.seed)
    else:
        table = pd.read_csv(table_path, dtype={"patient_id": str})
    print(_summary(result, table, time.perf_counter() - start))


def _summary(result: FitResult, table: pd.DataFrame, seconds: float) -> str:
    parts = [f"{result.model_path.stem:>18}: best epoch {result.best_epoch + 1}"]
    for cohort in ("internal_validation", "external_validation"):
        rows = table[table["cohort"] == cohort]
        if len(rows) and rows["pcr"].nunique() == 2:
            auc = auc_or_nan(rows["pcr"], rows["score"])
            parts.append(f"AUC {cohort.split('_')[0][:3]} {auc:.3f}")
    val = table[table["cohort"] != "training"]
    if val["dice_pre"].notna().any():
        parts.append(f"Dice pre {val['dice_pre'].mean():.3f}")
    status = "cached" if result.skipped else f"{seconds:.0f} s"
    return ", ".join(parts) + f" ({status})"


# --------------------------------------------------------------------------- figures
def read_log(path: str | os.PathLike) -> pd.DataFrame:
    """A training log (one row per epoch)."""
    return pd.read_csv(path)


def plot_training_curves(log_paths: Mapping[str, str | os.PathLike] | Sequence[str | os.PathLike]):
    """Per epoch and run: loss (fit dotted, tune solid), pCR loss (fit dotted, tune solid),
    tune Dice (pre solid, post dashed) and tune AUC (log columns ``val_*``: the tune subset)."""
    import matplotlib.pyplot as plt

    if not isinstance(log_paths, Mapping):
        log_paths = {Path(p).parent.name: p for p in log_paths}
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.4))
    for i, (name, path) in enumerate(log_paths.items()):
        log, color = read_log(path), f"C{i % 10}"
        epochs = log["epoch"] + 1
        for ax, key in ((axes[0], "loss"), (axes[1], "pcr_loss")):
            if key in log:
                ax.plot(epochs, log[key], color=color, alpha=0.6, linestyle=":")
            if f"val_{key}" in log:
                ax.plot(epochs, log[f"val_{key}"], color=color, label=name)
        for key, style in (("val_mask_pre_dice", "-"), ("val_mask_post_dice", "--")):
            if key in log:
                axes[2].plot(epochs, log[key], color=color, linestyle=style)
        if "val_pcr_auc" in log:
            axes[3].plot(epochs, log["val_pcr_auc"], color=color)
    titles = ["weighted loss (dotted: fit, solid: tune)", "pCR loss (dotted: fit, solid: tune)",
              "tune Dice (solid: pre, dashed: post)", "tune AUC (pCR, gradient-trained unit)"]
    for ax, title in zip(axes, titles, strict=True):
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("epoch")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def readout_table(models_dir: str | os.PathLike) -> pd.DataFrame:
    """One row per trained run: the readout's chosen feature set, penalty and out-of-fold
    AUC over the training cohort (from the model cards)."""
    rows = []
    for card_path in sorted(Path(models_dir).glob("*.json")):
        card = json.loads(card_path.read_text())
        readout = card.get("readout") or {}
        rows.append({"run": card_path.stem, "variant": card.get("variant"),
                     "seed": card.get("seed", 0), "best_epoch": card.get("best_epoch", -1) + 1,
                     "readout_features": readout.get("features"), "C": readout.get("C"),
                     "oof_auc": readout.get("oof_auc")})
    return pd.DataFrame(rows)
