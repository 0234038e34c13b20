"""The model card (``<run>.json`` beside ``<run>.keras``) and the reported pCR probability.

The card holds what inference needs next to a trained model: its grid, ROI, sequences and
preprocessing, the prior correction and the stage-2 readout. Balanced sampling shifts the
gradient-trained unit's output probability; :func:`correct_prior` undoes that shift for runs
without the readout (the readout is fitted at the cohort's own prevalence and needs none;
AUC is unchanged either way). Importing this module does not import Keras
(:mod:`utils.inference.predict` and :mod:`utils.evaluation.evaluate` depend on it).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from utils.config import Profile
from utils.training.sampling import epoch_fraction

if TYPE_CHECKING:
    from utils.training.config import TrainConfig
    from utils.training.patients import TrainData
    from utils.training.readout import Readout


def run_name(variant: str, replica: int = 0) -> str:
    """File stem of one trained replica: ``full``, ``full_seed1``, ..."""
    return variant if replica == 0 else f"{variant}_seed{replica}"


def correct_prior(p: np.ndarray, train_fraction: float, prevalence: float) -> np.ndarray:
    """Undo the prior shift of balanced sampling: odds x (prevalence odds / training odds)."""
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-7, 1 - 1e-7)
    if not 0 < train_fraction < 1 or not 0 < prevalence < 1:
        return p
    ratio = (prevalence / (1 - prevalence)) / (train_fraction / (1 - train_fraction))
    odds = p / (1 - p) * ratio
    return odds / (1 + odds)


def model_card(variant: str, profile: Profile, data: TrainData, cfg: TrainConfig, *,
               best_epoch: int, best_metric: float | None, epochs: int,
               readout: Readout | None = None) -> dict[str, Any]:
    """What :mod:`utils.inference.predict` needs next to a model: grid, ROI, prior correction.

    A refitted readout is fitted at the training cohort's own prevalence, so it needs no
    prior correction."""
    fit_ids = data.ids("fit")
    labels = {p: data.arrays[p].pcr for p in fit_ids}
    return {"variant": variant, "seed": cfg.seed,
            "profile": profile.name,
            "spacing_zyx": list(data.preprocessing.get("spacing_zyx", profile.spacing_zyx)),
            "roi_zyx": list(data.input_shape[:3]), "sequences": list(data.sequences),
            "preprocessing": data.preprocessing,
            "train_pcr_fraction": epoch_fraction(fit_ids, labels, cfg.pcr_fraction),
            "prevalence": float(np.mean(list(labels.values()))),
            "prior_correction": cfg.prior_correction and readout is None,
            "readout": readout.card() if readout is not None else None,
            "best_epoch": best_epoch, "monitor": cfg.monitor,
            "best_metric": best_metric, "epochs": epochs,
            "config": _jsonable(asdict(cfg))}


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


def score_from_card(raw: np.ndarray, card: Mapping[str, Any] | None) -> np.ndarray:
    """The reported pCR probability: raw model output, prior-corrected if the card says so."""
    if not card or not card.get("prior_correction"):
        return np.asarray(raw, dtype=np.float64)
    return correct_prior(raw, card["train_pcr_fraction"], card["prevalence"])


def read_model_card(model_path: str | os.PathLike) -> dict[str, Any] | None:
    """The card beside a ``.keras`` model (None when there is none)."""
    path = Path(model_path).with_suffix(".json")
    return json.loads(path.read_text()) if path.exists() else None
