"""Names of the evaluated models and cohorts, their display labels and display order, and the
'value (low–high)' number format. Imports no other evaluation module (the README report
needs only this)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from utils.config import COHORTS

MAIN_MODEL = "full"
ABLATIONS: tuple[str, ...] = ("paper_head", "single_task", "pre_only", "post_only", "untied",
                              "bottleneck_join")
HANDCRAFTED_PRED = "handcrafted_pred"
HANDCRAFTED_GT = "handcrafted_gt"
HANDCRAFTED: tuple[str, ...] = (HANDCRAFTED_PRED, HANDCRAFTED_GT)
VOLUME_GT = "volume_reduction_gt"
VOLUME_PRED = "volume_reduction_pred"
ORACLE = "oracle"
IMAGE_ORACLE = "image_oracle"
ORACLES: tuple[str, ...] = (ORACLE, IMAGE_ORACLE)
INTEGRATED = "integrated"
VALIDATION_COHORTS: tuple[str, ...] = COHORTS[1:]

MODEL_LABELS: dict[str, str] = {
    "full": "3D RP-Net (full)",
    "paper_head": "release's pCR head (whole-ROI pooling)",
    HANDCRAFTED_PRED: "handcrafted (predicted masks)",
    HANDCRAFTED_GT: "handcrafted (GT masks)",
    IMAGE_ORACLE: "image-only oracle (phantom latent)",
    "single_task": "single-task (pCR only)",
    "pre_only": "pre-treatment exam only",
    "post_only": "post-treatment exam only",
    "untied": "untied branch weights",
    "bottleneck_join": "bottleneck join only",
    VOLUME_GT: "volume reduction (GT masks)",
    VOLUME_PRED: "volume reduction (predicted masks)",
    INTEGRATED: "integrated (RP-Net + CEA, CA19-9)",
    ORACLE: "oracle (true phantom probability)",
}
COHORT_LABELS = {"training": "training", "internal_validation": "internal validation",
                 "external_validation": "external validation"}


def model_label(model: str) -> str:
    """Display name of a model (its key when it has none)."""
    return MODEL_LABELS.get(model, model)


def fmt_ci(value, low, high, digits: int = 2) -> str:
    """'value (low–high)', or 'n/a' when the value is missing."""
    if value is None or not np.isfinite(value):
        return "n/a"
    return f"{value:.{digits}f} ({fmt_range(low, high, digits)})"


def fmt_range(low, high, digits: int = 2) -> str:
    """'low–high', or 'n/a' when a bound is missing."""
    if low is None or high is None or not (np.isfinite(low) and np.isfinite(high)):
        return "n/a"
    return f"{low:.{digits}f}–{high:.{digits}f}"


def models_in(scores: pd.DataFrame) -> list[str]:
    """Models of a score table in display order (main, ablations, baselines, others)."""
    order = [MAIN_MODEL, *ABLATIONS, *HANDCRAFTED, VOLUME_GT, VOLUME_PRED, INTEGRATED,
             IMAGE_ORACLE, ORACLE]
    present = list(dict.fromkeys(scores["model"]))
    return [m for m in order if m in present] + [m for m in present if m not in order]


def cohorts_in(scores: pd.DataFrame) -> list[str]:
    """Cohorts of a table in :data:`utils.config.COHORTS` order, then any others."""
    present = set(scores["cohort"])
    return [c for c in COHORTS if c in present] + sorted(present - set(COHORTS))
