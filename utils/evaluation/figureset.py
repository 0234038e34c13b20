"""The evaluation's figures, one function each: notebook 04 draws them one by one beside its
narrative, ``python -m utils.evaluation`` writes them all (:func:`write_figures`).

Each function takes the :class:`~utils.evaluation.evaluate.Evaluation`, the run's
:class:`~utils.config.Paths` and a title (cohort label and profile) and returns the figure,
or None when its inputs are absent (no predicted masks, no manifest for the integrated
model, no trained model or no TensorFlow for attribution).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from utils.config import Paths
from utils.evaluation import explain as xp
from utils.evaluation import plots
from utils.evaluation.evaluate import Evaluation
from utils.evaluation.labels import MAIN_MODEL
from utils.figures import save_figure

Figure = plt.Figure | None


def roc(evaluation: Evaluation, paths: Paths, title: str) -> Figure:
    return plots.plot_roc_curves(evaluation.scores, evaluation.auc,
                                 operating=evaluation.performance,
                                 title=f"ROC curves, {title} (AUC, DeLong 95% CI)")


def precision_recall(evaluation: Evaluation, paths: Paths, title: str) -> Figure:
    return plots.plot_pr_curves(evaluation.scores)


def ablations(evaluation: Evaluation, paths: Paths, title: str) -> Figure:
    return plots.plot_ablation_aucs(evaluation.auc, evaluation.tests,
                                    seed_aucs=evaluation.seed_aucs)


def integrated(evaluation: Evaluation, paths: Paths, title: str) -> Figure:
    if evaluation.integrated is None:
        return None
    return plots.plot_imaging_vs_integrated(evaluation.scores, evaluation.auc,
                                            evaluation.tests)


def segmentation(evaluation: Evaluation, paths: Paths, title: str) -> Figure:
    if evaluation.segmentation.empty:
        return None
    return plots.plot_segmentation(evaluation.segmentation, MAIN_MODEL)


def overlay_cases(evaluation: Evaluation) -> pd.DataFrame:
    """The patients the overlay figure shows (best, median and worst Dice per cohort)."""
    return plots.pick_overlay_cases(evaluation.segmentation, MAIN_MODEL)


def overlays(evaluation: Evaluation, paths: Paths, title: str) -> Figure:
    if evaluation.segmentation.empty:
        return None
    return plots.plot_overlays(overlay_cases(evaluation), paths.cache_dir,
                               paths.predicted_masks_dir, evaluation.segmentation, MAIN_MODEL)


def calibration(evaluation: Evaluation, paths: Paths, title: str) -> Figure:
    return plots.plot_calibration(evaluation.calibration, evaluation.brier)


def decision_curves(evaluation: Evaluation, paths: Paths, title: str) -> Figure:
    return plots.plot_decision_curves(evaluation.decision)


def attribution(evaluation: Evaluation, paths: Paths
                ) -> tuple[Figure, pd.DataFrame | None, str]:
    """Grad-CAM and input x gradient of the main model for a responder and a non-responder:
    ``(figure, share of attribution inside the tumour per patient, '')``, or
    ``(None, None, why it was skipped)``."""
    import keras

    model_path = paths.model_file(MAIN_MODEL)
    if keras.backend.backend() != "tensorflow":
        return None, None, (f"attribution skipped: it needs the TensorFlow backend (Keras "
                            f"uses {keras.backend.backend()!r})")
    if not model_path.exists():
        return None, None, f"attribution skipped: {model_path.name} not found (run training)"
    from utils.model.compile import load_rpnet

    channels = xp.cached_sequences(paths.cache_dir)
    shown = channels.index("DWI") if "DWI" in channels else -1  # DWI, else the last
    chosen = xp.pick_gradcam_patients(evaluation.scores, MAIN_MODEL)
    panels, shares = xp.attribution_panels(
        load_rpnet(model_path, compile=False), chosen,
        {pid: paths.cache_file(pid) for pid in chosen["patient_id"]}, shown)
    return xp.plot_grad_cam(panels), shares, ""


FIGURES: dict[str, Callable[[Evaluation, Paths, str], Figure]] = {
    "fig04_roc": roc, "fig04_pr": precision_recall, "fig04_ablations": ablations,
    "fig04_integrated_roc": integrated, "fig04_segmentation": segmentation,
    "fig04_overlays": overlays, "fig04_calibration": calibration,
    "fig04_decision_curves": decision_curves,
    "fig04_attribution": lambda evaluation, paths, title: attribution(evaluation, paths)[0],
}


def write_figures(evaluation: Evaluation, paths: Paths, title: str) -> list[Path]:
    """Every figure of :data:`FIGURES` that has its inputs, as PNG + PDF in the figures folder."""
    written = []
    for name, draw in FIGURES.items():
        fig = draw(evaluation, paths, title)
        if fig is not None:
            written += save_figure(fig, name, paths.figures_dir)
            plt.close(fig)
    return written
