"""Reading a run's training: the per-epoch log, the training curves and the readout table."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd


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
    """One row per trained run: the readout's chosen feature set and penalty, its nested
    out-of-fold AUC over the training cohort and the chosen configuration's own
    (selection-biased) CV AUC, from the model cards."""
    rows = []
    for card_path in sorted(Path(models_dir).glob("*.json")):
        card = json.loads(card_path.read_text())
        readout = card.get("readout") or {}
        rows.append({"run": card_path.stem, "variant": card.get("variant"),
                     "seed": card.get("seed", 0), "best_epoch": card.get("best_epoch", -1) + 1,
                     "readout_features": readout.get("features"), "C": readout.get("C"),
                     "oof_auc": readout.get("oof_auc"),
                     "selected_cv_auc": readout.get("selected_cv_auc")})
    return pd.DataFrame(rows)


def readout_weights(models_dir: str | os.PathLike, variant: str = "full",
                    top: int = 12) -> pd.DataFrame:
    """Standardised readout coefficients of every seed of ``variant`` (from the model cards),
    one column per seed, for the ``top`` head columns by mean absolute weight over seeds
    (0 where a seed's readout did not choose the column): which inputs carry the pCR score."""
    columns = {}
    for card_path in sorted(Path(models_dir).glob("*.json")):
        card = json.loads(card_path.read_text())
        weights = (card.get("readout") or {}).get("weights")
        if card.get("variant") == variant and weights:
            seed = f"seed {card.get('seed', 0)}"
            columns[seed] = {w["feature"]: w["standardised"] for w in weights}
    table = pd.DataFrame(columns).fillna(0.0)
    if table.empty:
        return table
    order = table.abs().mean(axis=1).sort_values(ascending=False).index[:top]
    return table.loc[order].rename_axis("head feature")
