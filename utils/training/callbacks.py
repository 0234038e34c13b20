"""The Keras callbacks of one training run, in the order Keras calls them at an epoch's end:
epoch sync, learning-rate schedule, early stopping, best and latest checkpoints, the commit,
CSV log, TensorBoard and the progress bar."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import keras

from utils.training.checkpoint import EpochState, RunCheckpoint, model_checkpoints
from utils.training.config import TrainConfig
from utils.training.dataset import EpochSync, RPNetDataset


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


class EpochProgress(keras.callbacks.Callback):
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


def run_callbacks(cfg: TrainConfig, ckpt_dir: Path, log_path: Path, state: EpochState,
                  train: RPNetDataset, tensorboard_dir: Path, progress: Any = None
                  ) -> tuple[list[keras.callbacks.Callback], RunCheckpoint]:
    """Schedule, early stopping, checkpoints, commit, CSV log, TensorBoard, progress: in the
    order Keras calls them at the end of an epoch (the commit after what it records)."""
    tracked = schedule_callbacks(cfg)
    tracked["best"], latest = model_checkpoints(ckpt_dir, cfg.monitor, cfg.monitor_mode)
    commit = RunCheckpoint(ckpt_dir, tracked, state)
    callbacks = [EpochSync(train), *tracked.values(), latest, commit,
                 keras.callbacks.CSVLogger(str(log_path), append=True)]
    if cfg.tensorboard and keras.backend.backend() == "tensorflow":
        # epoch losses, Dice, pCR AUC and learning rate; no graph (it is large and the same
        # for every run: notebook 02 shows the network)
        callbacks.append(keras.callbacks.TensorBoard(str(tensorboard_dir), write_graph=False))
    if progress is not None:
        callbacks.append(EpochProgress(progress, cfg.monitor))
    return callbacks, commit
