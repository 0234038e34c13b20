"""The whole evaluation of a run in one call (notebook 04): :func:`run_evaluation` builds the
score table (with the handcrafted baselines and the integrated model), the cohort tables,
the paired tests, the segmentation tables and ``metrics.json``, and returns them as an
:class:`Evaluation`.

Inputs (docs/CONTRACTS.md) are read by :mod:`utils.evaluation.predictions`; the steps live in
:mod:`~utils.evaluation.scoretable`, :mod:`~utils.evaluation.integrated`,
:mod:`~utils.evaluation.cohorttables`, :mod:`~utils.evaluation.comparisons`,
:mod:`~utils.evaluation.segmentation` and :mod:`~utils.evaluation.results` (writing).
Numbers computed on the phantom are **not** the paper's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from utils.evaluation import integrated as ig
from utils.evaluation.baseline import baseline_rows
from utils.evaluation.cohorttables import (
    auc_table,
    calibration_tables,
    choose_operating_points,
    cohort_performance,
    decision_curve_table,
    performance_table,
)
from utils.evaluation.comparisons import paired_delong_tests, seed_pair_agreement
from utils.evaluation.labels import HANDCRAFTED_GT, HANDCRAFTED_PRED, INTEGRATED, MAIN_MODEL
from utils.evaluation.predictions import (
    ID_COLUMNS,
    seed_auc_table,
    seed_average,
    seed_summary,
    training_scores_out_of_fold,
)
from utils.evaluation.results import build_metrics, metrics_meta
from utils.evaluation.scoretable import score_table
from utils.evaluation.segmentation import segmentation_summary, segmentation_table


@dataclass
class Evaluation:
    """Every table of one evaluation run."""

    scores: pd.DataFrame
    auc: pd.DataFrame
    thresholds: pd.DataFrame
    performance: pd.DataFrame
    tests: pd.DataFrame
    integrated: ig.IntegratedModel | None
    segmentation: pd.DataFrame
    seg_summary: pd.DataFrame
    calibration: pd.DataFrame
    brier: pd.DataFrame
    decision: pd.DataFrame
    metrics: dict
    seed_aucs: pd.DataFrame | None = None
    handcrafted: pd.DataFrame | None = None  # baseline coefficients

    def tables(self) -> dict[str, pd.DataFrame]:
        """The CSV tables written to the results folder, by file stem."""
        out = {"auc_table": self.auc, "operating_points": self.thresholds,
               "performance_table": cohort_performance(self.auc, self.performance),
               "performance_all_thresholds": self.performance, "paired_delong_tests": self.tests,
               "segmentation_per_patient": self.segmentation,
               "segmentation_summary": self.seg_summary, "calibration_brier": self.brier}
        if self.integrated is not None:
            out["integrated_coefficients"] = self.integrated.coefficients
        if self.seed_aucs is not None:
            out["seed_aucs"] = self.seed_aucs
        if self.handcrafted is not None and len(self.handcrafted):
            out["handcrafted_coefficients"] = self.handcrafted
        return out


def handcrafted_baselines(patients: pd.DataFrame, cache_dir: str | Path | None,
                          masks_dir: str | Path | None, folds: pd.DataFrame | None,
                          main_model: str = MAIN_MODEL) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Score rows and coefficients of the handcrafted baselines
    (:mod:`utils.evaluation.baseline`) on the main model's predicted masks and on the
    ground-truth masks, for the patients and labels of ``patients`` (``patient_id, cohort,
    centre, pcr``); empty when the cache, masks or folds are missing."""
    if cache_dir is None or folds is None or not Path(cache_dir).exists():
        return pd.DataFrame(), pd.DataFrame()
    sources: dict[str, tuple[Path, str] | None] = {HANDCRAFTED_GT: None}
    if masks_dir is not None and (Path(masks_dir) / main_model).exists():
        sources = {HANDCRAFTED_PRED: (Path(masks_dir), main_model), **sources}
    return baseline_rows(patients, cache_dir, folds, sources)


def _with_integrated(scores: pd.DataFrame, patients: pd.DataFrame, split: pd.DataFrame | None,
                     predictions: pd.DataFrame) -> tuple[pd.DataFrame, ig.IntegratedModel]:
    """``scores`` plus the integrated model's rows, and the fitted model."""
    inputs = ig.integrated_inputs(scores, patients)
    integrated = ig.fit_integrated(inputs, ig.tune_ids(split),
                                   out_of_fold=training_scores_out_of_fold(predictions))
    return pd.concat([scores, ig.integrated_scores(integrated, inputs)],
                     ignore_index=True), integrated


def run_evaluation(predictions: pd.DataFrame, patients: pd.DataFrame | None = None,
                   split: pd.DataFrame | None = None, oracle: pd.DataFrame | None = None,
                   masks_dir: str | Path | None = None, cache_dir: str | Path | None = None,
                   profile: str = "demo", data_label: str = "phantom (synthetic)",
                   n_boot: int = 2000, seed: int = 0, folds: pd.DataFrame | None = None
                   ) -> Evaluation:
    """The whole evaluation in the notebook's order (the notebook runs the same steps one by
    one). ``patients`` (manifest patient table) enables the integrated model; ``masks_dir``
    and ``cache_dir`` enable segmentation metrics and, with ``folds``, the handcrafted
    baselines; ``oracle`` adds the oracle AUCs. Models trained with several seeds are scored
    by their seed average; per-seed AUCs are summarised in ``metrics.json``."""
    seed_aucs = seed_auc_table(predictions)
    averaged = seed_average(predictions)
    main = averaged[averaged["model"] == MAIN_MODEL]
    scores, handcrafted, integrated = score_table(averaged, oracle), None, None
    if patients is not None:
        rows, handcrafted = handcrafted_baselines(main[ID_COLUMNS], cache_dir, masks_dir,
                                                  folds)
        scores = pd.concat([scores, rows], ignore_index=True) if len(rows) else scores
        scores, integrated = _with_integrated(scores, patients, split, predictions)
    auc = auc_table(scores, n_boot=n_boot, seed=seed)
    thresholds = choose_operating_points(scores)
    performance = performance_table(scores, thresholds)
    seg = segmentation_table(masks_dir, cache_dir, main)
    seg_summary = segmentation_summary(seg)
    prob_models = [m for m in (MAIN_MODEL, INTEGRATED) if m in set(scores["model"])]
    curve, brier = calibration_tables(scores, prob_models)
    metrics = build_metrics(auc, performance, seg_summary,
                            metrics_meta(profile, data_label, integrated, n_boot),
                            seeds=seed_summary(seed_aucs))
    tests = seed_pair_agreement(paired_delong_tests(scores), seed_aucs)
    return Evaluation(scores, auc, thresholds, performance, tests,
                      integrated, seg, seg_summary, curve, brier,
                      decision_curve_table(scores, prob_models), metrics, seed_aucs,
                      handcrafted)
