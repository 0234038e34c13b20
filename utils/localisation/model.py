"""The localiser network and its training: one RP-Net backbone branch, sigmoid tumour map.

:func:`fit_localiser` trains it on the training cohort's coarse pre exams with the
segmentation loss of RP-Net (soft Dice + BCE), a fixed number of epochs declared per profile
(no selection on data), seeded and deterministic; the model and a card are written
atomically.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import keras
import numpy as np

from utils.io import atomic_path, write_json_atomic
from utils.localisation.coarse import LocaliserConfig
from utils.model.losses import DiceBCELoss
from utils.model.rpnet import build_backbone
from utils.repro import set_seeds


def build_localiser(cfg: LocaliserConfig, channels: int, seed: int | None = None
                    ) -> keras.Model:
    """The backbone on the coarse grid with a sigmoid map ``tumour`` (z, y, x, 1)."""
    backbone = build_backbone((*cfg.shape_zyx, channels), depth=cfg.depth,
                              base_filters=cfg.base_filters, dropout=0.0, seed=seed,
                              name="localiser_backbone")
    image = keras.Input((*cfg.shape_zyx, channels), name="image")
    logits = backbone(image)["mask_logits"]
    tumour = keras.layers.Activation("sigmoid", name="tumour", dtype="float32")(logits)
    return keras.Model(image, tumour, name="localiser")


def fit_localiser(x: np.ndarray, y: np.ndarray, cfg: LocaliserConfig, seed: int,
                  model_path: str | os.PathLike, card: Mapping[str, Any]) -> keras.Model:
    """Train on ``x`` (n, z, y, x, C) and targets ``y`` (n, z, y, x); save model and card."""
    set_seeds(seed)
    model = build_localiser(cfg, x.shape[-1], seed)
    model.compile(optimizer=keras.optimizers.Adam(cfg.learning_rate), loss=DiceBCELoss())
    history = model.fit(x, y[..., None], batch_size=cfg.batch_size, epochs=cfg.epochs,
                        shuffle=True, verbose=0)
    path = Path(model_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:  # the temporary name keeps the .keras suffix
        model.save(tmp)
    losses = [round(float(v), 5) for v in history.history["loss"]]
    write_json_atomic(localiser_card_path(path), {**card, "config": cfg.to_dict(),
                                                  "seed": seed, "n_training": len(x),
                                                  "loss_per_epoch": losses})
    return model


def localiser_card_path(model_path: str | os.PathLike) -> Path:
    """The card beside a localiser model (``localiser.json``)."""
    return Path(model_path).with_suffix(".json")


def load_localiser(model_path: str | os.PathLike) -> tuple[keras.Model, dict[str, Any]]:
    """A trained localiser and its card (config, sequences, reference sequence)."""
    path = Path(model_path)
    if not path.exists():
        raise FileNotFoundError(f"localiser model {path} does not exist (notebook 01 or "
                                "python -m utils.localisation trains it)")
    card = json.loads(localiser_card_path(path).read_text())
    return keras.saving.load_model(path, compile=False, safe_mode=True), card


def predict_maps(model: keras.Model, x: np.ndarray, batch_size: int = 4) -> np.ndarray:
    """Tumour probability maps (n, z, y, x) for coarse exams ``x`` (n, z, y, x, C)."""
    return np.asarray(model.predict(x, batch_size=batch_size, verbose=0), np.float32)[..., 0]


def config_from_card(card: Mapping[str, Any]) -> LocaliserConfig:
    """The configuration a localiser was trained with (its card's ``config``)."""
    stored = dict(card["config"])
    return LocaliserConfig(**{k: tuple(v) if isinstance(v, list) else v
                              for k, v in stored.items()})
