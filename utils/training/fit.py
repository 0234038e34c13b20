"""Training one variant: stage 1 as one ``model.fit`` with its callbacks, then stage 2, the
readout refit, and the saved model with its card (:func:`fit_variant`).

Stage 1 trains the network: segmentation of both exams and, with the default tumour-guided
head, the pCR unit on features the pCR loss cannot change (``TrainConfig.pcr_gradient=False``:
the backbone learns from the masks alone). The tune subset of the training cohort
(:func:`utils.training.split.make_split`) is its ``validation_data``: Keras names its metrics
``val_*`` (columns of ``logs/<run>/training.csv``), although no validation-cohort patient is
involved. Stage 2 (:func:`refit_readout`, :mod:`utils.training.readout`) refits the pCR unit in
closed form: a logistic regression on the head vectors of every training patient, feature set
and penalty chosen by 5-fold cross-validation over the whole training cohort
(``results/folds.csv``); the out-of-fold scores are written to ``readout/<run>.csv``.

Checkpoints (:mod:`utils.training.checkpoint`): after every epoch the model and optimiser, then
a commit with the callbacks' counters and the dropout seed-generator states.
:func:`fit_variant` resumes from the newest commit that loads; the batches of an epoch depend
only on ``(seed, epoch)`` (:class:`utils.training.dataset.EpochSync`, Keras' own shuffling
off), so with op determinism on a resumed run ends with the same weights as an uninterrupted
one on CPU.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pandas as pd

from utils.config import Paths, Profile, as_profile, get_paths
from utils.io import atomic_path, write_atomic, write_json_atomic
from utils.model.compile import compile_rpnet
from utils.model.rpnet import (
    build_rpnet,
    head_feature_names,
    head_groups,
    head_vector_model,
    set_readout,
    variant_of,
)
from utils.repro import set_seeds
from utils.training.callbacks import run_callbacks
from utils.training.checkpoint import (
    EpochState,
    RunCheckpoint,
    latest_state,
    restore,
    trim_log,
)
from utils.training.config import TrainConfig, replica_seed, run_seed
from utils.training.dataset import RPNetDataset, stacked_inputs
from utils.training.distribute import DeviceSetup, setup_device
from utils.training.modelcard import model_card, run_name
from utils.training.patients import TrainData, check_no_leak
from utils.training.readout import Readout, fit_readout


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


def _reset_run(ckpt_dir: Path, log_path: Path, tensorboard_dir: Path) -> None:
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    shutil.rmtree(tensorboard_dir, ignore_errors=True)
    log_path.unlink(missing_ok=True)


def _fresh_model(variant: str, profile: Profile, cfg: TrainConfig, data: TrainData,
                 device: DeviceSetup) -> keras.Model:
    """Seeds set, the untrained model built and compiled (op determinism on CPU by default)."""
    deterministic = cfg.deterministic if cfg.deterministic is not None else not device.gpus
    set_seeds(profile.seed, deterministic=deterministic)
    return build_compiled(variant, profile, cfg, data.input_shape, device)


@dataclass
class RunSetup:
    """One run ready for ``model.fit`` (:func:`start_run`): the compiled model (restored from
    its newest checkpoint, if any), the datasets, the callbacks and the epoch range.

    ``model.fit(setup.train, validation_data=setup.validation_data,
    validation_batch_size=setup.batch_size, epochs=setup.epochs,
    initial_epoch=setup.initial_epoch, callbacks=setup.callbacks, shuffle=False)`` trains it
    (the batch order is the dataset's: ``shuffle=False``); :func:`finish_run` completes it."""

    variant: str
    profile: Profile
    config: TrainConfig
    paths: Paths
    data: TrainData = field(repr=False)
    model: keras.Model = field(repr=False)
    train: RPNetDataset = field(repr=False)
    validation_data: tuple[dict, dict] = field(repr=False)
    batch_size: int
    initial_epoch: int
    epochs: int  # initial_epoch when there is nothing left to train (done, stopped early)
    callbacks: list[keras.callbacks.Callback] = field(repr=False)
    commit: RunCheckpoint = field(repr=False)

    @property
    def run(self) -> str:
        return run_name(self.variant, self.config.seed)


def start_run(variant: str, data: TrainData, profile: Profile | str | None = None,
              config: TrainConfig | None = None, paths: Paths | None = None, *,
              resume: bool = True, progress: Any = None, stop_after: int | None = None
              ) -> RunSetup:
    """Everything ``model.fit`` needs for one run (:class:`RunSetup`).

    Resumes from ``runs/<profile>/checkpoints/<run>/`` (:mod:`utils.training.checkpoint`)
    when a checkpoint exists (``resume=False`` starts over); ``stop_after`` ends the fit after
    that many epochs, leaving the checkpoint as an interruption would. ``progress``: an
    optional tqdm bar (updated once per epoch)."""
    prof = as_profile(profile)
    cfg = (config or TrainConfig()).resolved(prof)
    paths = paths or get_paths(prof.name)
    run = run_name(variant, cfg.seed)
    ckpt_dir, log_path = paths.checkpoint_dir(run), paths.log_csv(run)
    if not resume:
        _reset_run(ckpt_dir, log_path, paths.tensorboard_dir(run))
    fit_ids, tune_ids = data.ids("fit"), data.ids("tune")
    check_no_leak(data, fit_ids + tune_ids)
    device = setup_device(cfg.mixed_precision)  # first: a strategy configures TF at start-up
    model, state = restore(ckpt_dir, lambda: _fresh_model(variant, prof, cfg, data, device))
    state = state or EpochState()
    first = state.epoch
    trim_log(log_path, first)
    batch_size = cfg.batch_size * device.replicas
    train = RPNetDataset(data.arrays, fit_ids, variant, batch_size,
                         training=True, seed=run_seed(prof, cfg.seed), augment=cfg.augment,
                         pcr_fraction=cfg.pcr_fraction, steps_per_epoch=cfg.steps_per_epoch,
                         workers=cfg.workers)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    keras_callbacks, commit = run_callbacks(cfg, ckpt_dir, log_path, state, train,
                                            paths.tensorboard_dir(run), progress)
    end = cfg.epochs if stop_after is None else min(cfg.epochs, first + stop_after)
    end = first if state.stopped_early else max(first, end)
    return RunSetup(variant, prof, cfg, paths, data, model, train,
                    stacked_inputs(data, tune_ids, variant), batch_size, first, end,
                    keras_callbacks, commit)


def finish_run(setup: RunSetup) -> FitResult:
    """After ``model.fit``: unless interrupted, load the best epoch's weights, refit the
    readout (stage 2, :func:`refit_readout`) and write ``models/<run>.keras``, its card and
    the out-of-fold readout scores. A run completed before is left as it is (``skipped``)."""
    cfg, paths, run = setup.config, setup.paths, setup.run
    ckpt_dir, model_path = paths.checkpoint_dir(run), paths.model_file(run)
    state, model = setup.commit.state, setup.model
    if state.done and model_path.exists():  # completed before: nothing refitted or rewritten
        return FitResult(setup.variant, model_path, paths.log_csv(run), state.best_epoch,
                         state.best_metric, 0, state.seconds, skipped=True)
    interrupted = state.epoch < cfg.epochs and not state.stopped_early
    if not interrupted:
        model.load_weights(ckpt_dir / state.best_file)  # keeps the traced functions
        readout = refit_readout(model, setup.data, cfg) if cfg.readout else None
        _finish(setup.variant, model, ckpt_dir, state, model_path, setup.profile, setup.data,
                cfg, readout, paths)
    return FitResult(setup.variant, model_path, paths.log_csv(run), state.best_epoch,
                     state.best_metric, state.epoch - setup.initial_epoch, state.seconds,
                     interrupted=interrupted, model=None if interrupted else model)


def fit_variant(variant: str, data: TrainData, profile: Profile | str | None = None,
                config: TrainConfig | None = None, paths: Paths | None = None, *,
                resume: bool = True, progress: Any = None, stop_after: int | None = None,
                callbacks: Sequence[keras.callbacks.Callback] = ()) -> FitResult:
    """Train one variant on the fit subset with one ``model.fit``, the tune subset as its
    ``validation_data`` (checkpoint selection, plateaus, early stopping):
    :func:`start_run`, ``model.fit``, :func:`finish_run`.

    A run already complete is not trained again (``skipped``). ``callbacks``: more Keras
    callbacks, called last. The best epoch's model, with its refitted readout, is written to
    ``runs/<profile>/models/<run>.keras`` when the run completes.
    """
    prof = as_profile(profile)
    cfg = (config or TrainConfig()).resolved(prof)
    paths = paths or get_paths(prof.name)
    run = run_name(variant, cfg.seed)
    ckpt_dir, model_path = paths.checkpoint_dir(run), paths.model_file(run)
    done = latest_state(ckpt_dir) if resume else None
    if done is not None and done.done and model_path.exists():
        return FitResult(variant, model_path, paths.log_csv(run), done.best_epoch,
                         done.best_metric, 0, done.seconds, skipped=True)
    setup = start_run(variant, data, prof, cfg, paths, resume=resume, progress=progress,
                      stop_after=stop_after)
    if setup.initial_epoch < setup.epochs:
        setup.model.fit(setup.train, validation_data=setup.validation_data,
                        validation_batch_size=setup.batch_size, epochs=setup.epochs,
                        initial_epoch=setup.initial_epoch,
                        callbacks=[*setup.callbacks, *callbacks], shuffle=False, verbose=0)
    return finish_run(setup)


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
                          head_groups(model), names=head_feature_names(model, data.sequences))
    set_readout(model, readout.coef, readout.intercept)
    return readout
