"""Stage 2 of training: a cross-validated logistic readout of the pCR head.

Stage 1 (:mod:`utils.training.fit`) trains the whole network, segmentation and pCR together. The
network's last layer is one sigmoid unit on the *head vector* (the tumour-guided features of
:func:`utils.model.rpnet.build_rpnet`). Stage 2 refits that unit in closed form: an L2-penalised
logistic regression on the head vectors of every training-cohort patient (unaugmented, the
network in inference mode), its penalty chosen by stratified k-fold cross-validation, and the
fitted coefficients written back into the unit (:func:`utils.model.rpnet.set_readout`), so the saved
``.keras`` model outputs the refitted probability.

Why: the readout is small and the cohort is small. A gradient-trained unit on a few dozen
pCR patients, after a few epochs on balanced batches, is neither converged nor calibrated;
the logistic fit is both, at the natural prevalence (no prior correction needed), and its
cross-validation uses all training patients instead of a 24-patient tune split.

Every choice uses the training cohort only. The folds (:func:`utils.training.split.make_folds`)
are saved (``results/folds.csv``),
the *nested* out-of-fold probability of each training patient (its fold scored by a readout
chosen and fitted on the other folds) is the training-cohort score in ``predictions.csv``, so
neither operating points chosen on the training cohort nor the reported training AUC are
in-sample for the readout or its selection; the out-of-fold AUC of every feature set and
penalty, and the chosen weights, are kept in the model card. tests/test_readout.py checks on
null labels that the nested estimate is at chance where the selected configuration's is not.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from utils.measures import auc_or_nan as roc_auc
from utils.measures import sigmoid

C_GRID: tuple[float, ...] = tuple(float(c) for c in np.logspace(-4, 1, 11))


def fit_logistic(x: np.ndarray, y: np.ndarray, c: float) -> tuple[np.ndarray, float]:
    """L2 logistic regression on standardised ``x``: scikit-learn's
    ``Pipeline(StandardScaler, LogisticRegression(C=c))``, returned as coefficients and
    intercept for the *raw* features (``coef = w / scale``, ``intercept = b - coef @ mean``),
    so that ``sigmoid(x @ coef + intercept)`` is the pipeline's probability and the pCR unit
    can hold it (:func:`utils.model.rpnet.set_readout`). Constant features get scale 1."""
    pipeline = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000))
    pipeline.fit(x, y)
    scaler, model = pipeline[0], pipeline[-1]
    coef = model.coef_[0] / scaler.scale_
    return coef, float(model.intercept_[0] - coef @ scaler.mean_)


def out_of_fold(x: np.ndarray, y: np.ndarray, folds: np.ndarray, c: float) -> np.ndarray:
    """Out-of-fold probabilities: each fold predicted by a fit on the other folds."""
    oof = np.zeros(len(y))
    for fold in np.unique(folds):
        held = folds == fold
        if len(np.unique(y[~held])) < 2:
            oof[held] = y[~held].mean()
            continue
        coef, intercept = fit_logistic(x[~held], y[~held], c)
        oof[held] = sigmoid(x[held] @ coef + intercept)
    return oof


@dataclass
class Readout:
    """A fitted readout: coefficients over the whole head vector (zero outside the chosen
    feature set), intercept, the chosen feature set and penalty, and the CV table.

    ``oof`` is the *nested* out-of-fold probability: each fold scored by a readout whose
    feature set and penalty were chosen, and whose weights were fitted, on the other folds
    alone. The selected configuration's own CV AUC (``selected_cv_auc``) is optimistic: it is
    the best of many configurations on the same folds, above 0.5 even for labels that nothing
    predicts."""

    coef: np.ndarray
    intercept: float
    features: str
    c: float
    oof: np.ndarray = field(repr=False)  # nested out-of-fold probability per training patient
    cv: pd.DataFrame = field(repr=False)  # features, n_features, C, oof_auc, oof_log_loss
    names: list[str] = field(default_factory=list, repr=False)  # one per head column
    scale: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)  # column SDs
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, int), repr=False)

    @property
    def oof_auc(self) -> float:
        """AUC of the nested out-of-fold scores: the readout's honest training estimate."""
        return roc_auc(self.labels, self.oof)

    @property
    def selected_cv_auc(self) -> float:
        """CV AUC of the chosen configuration on the folds that chose it (optimistic)."""
        chosen = (self.cv["features"] == self.features) & (self.cv["C"] == self.c)
        return float(self.cv.loc[chosen, "oof_auc"].iloc[0])

    def card(self) -> dict:
        """What the model card records about the readout."""
        return {"features": self.features, "C": self.c, "oof_auc": self.oof_auc,
                "selected_cv_auc": self.selected_cv_auc,
                "k_folds": int(self.cv.attrs["k"]), "cv": self.cv.to_dict("records"),
                "intercept": self.intercept, "weights": self.weights().to_dict("records")}

    def weights(self) -> pd.DataFrame:
        """The chosen columns' coefficients: raw (per unit of the head column) and
        standardised (per training-cohort SD of it, comparable between columns), largest
        standardised magnitude first."""
        names = self.names or [f"head[{i}]" for i in range(len(self.coef))]
        scale = self.scale if len(self.scale) == len(self.coef) else np.ones(len(self.coef))
        table = pd.DataFrame({"feature": names, "coef": self.coef,
                              "standardised": self.coef * scale})
        table = table[table["coef"] != 0]
        return table.reindex(table["standardised"].abs().sort_values(ascending=False).index
                             ).reset_index(drop=True)


def candidate_sets(groups: Sequence[tuple[str, int]]) -> dict[str, np.ndarray]:
    """Feature sets the readout may choose from, as column masks over the head vector.

    With tumour-level quantities: those alone, with each join's pooled features, and with
    every join; without them (the release's head): everything.
    """
    names = np.concatenate([[g] * width for g, width in groups])
    joins = [g for g in dict.fromkeys(n for n, _ in groups) if g != "tumour"]
    if "tumour" not in names:
        return {"all": np.ones(len(names), bool)}
    sets = {"tumour": names == "tumour"}
    for join in joins:
        sets[f"tumour+{join}"] = (names == "tumour") | (names == join)
    if len(joins) > 1:
        sets["tumour+" + "+".join(joins)] = np.ones(len(names), bool)
    return sets


def cv_table(x: np.ndarray, y: np.ndarray, folds: np.ndarray, sets: dict[str, np.ndarray],
             c_grid: Sequence[float]) -> pd.DataFrame:
    """Out-of-fold AUC and log loss of every feature set and penalty over ``folds``."""
    rows = []
    for name, columns in sets.items():
        for c in c_grid:
            oof = out_of_fold(x[:, columns], y, folds, c)
            rows.append({"features": name, "n_features": int(columns.sum()), "C": c,
                         "oof_auc": roc_auc(y, oof),
                         "oof_log_loss": float(log_loss(y, np.clip(oof, 1e-7, 1 - 1e-7),
                                                        labels=[0, 1]))})
    cv = pd.DataFrame(rows)
    cv.attrs["k"] = len(np.unique(folds))
    return cv


def best_configuration(cv: pd.DataFrame) -> tuple[str, float]:
    """Highest out-of-fold AUC; ties: lower log loss, fewer features, stronger penalty."""
    best = cv.sort_values(["oof_auc", "oof_log_loss", "n_features", "C"],
                          ascending=[False, True, True, True], na_position="last").iloc[0]
    return str(best["features"]), float(best["C"])


def nested_out_of_fold(x: np.ndarray, y: np.ndarray, folds: np.ndarray,
                       sets: dict[str, np.ndarray], c_grid: Sequence[float]) -> np.ndarray:
    """Each fold's probabilities from a readout selected (inner CV over the remaining folds)
    and fitted without it: selection cannot see the scored patients' labels."""
    oof = np.zeros(len(y))
    for fold in np.unique(folds):
        held = folds == fold
        xs, ys, inner = x[~held], y[~held], folds[~held]
        if len(np.unique(ys)) < 2 or len(np.unique(inner)) < 2:
            oof[held] = ys.mean()
            continue
        name, c = best_configuration(cv_table(xs, ys, inner, sets, c_grid))
        coef, intercept = fit_logistic(xs[:, sets[name]], ys, c)
        oof[held] = sigmoid(x[held][:, sets[name]] @ coef + intercept)
    return oof


def fit_readout(x: np.ndarray, y: np.ndarray, folds: np.ndarray,
                groups: Sequence[tuple[str, int]] | None = None,
                c_grid: Sequence[float] = C_GRID, names: Sequence[str] = ()) -> Readout:
    """Choose the feature set and penalty by out-of-fold AUC (:func:`best_configuration`),
    refit on every row, and score every row by :func:`nested_out_of_fold`. ``names``: one per
    column of ``x``, for the model card's weight table."""
    x, y, folds = np.asarray(x, float), np.asarray(y, int), np.asarray(folds)
    if len(np.unique(y)) < 2:
        raise ValueError("the readout needs pCR and non-pCR patients in the training cohort")
    sets = candidate_sets(groups or [("all", x.shape[1])])
    cv = cv_table(x, y, folds, sets, c_grid)
    name, c = best_configuration(cv)
    coef = np.zeros(x.shape[1])
    coef[sets[name]], intercept = fit_logistic(x[:, sets[name]], y, c)
    return Readout(coef, intercept, name, c, nested_out_of_fold(x, y, folds, sets, c_grid), cv,
                   list(names), x.std(axis=0), y)
