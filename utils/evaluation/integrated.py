"""The integrated model (as the paper's): logistic regression of the main model's deep score
(as a logit) and the blood tumour markers CEA and CA19-9, fitted on training-cohort rows only,
with its coefficient table and its score-table rows."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

from utils.cohort.manifest import MARKERS
from utils.evaluation.checks import check_binary_labels
from utils.evaluation.labels import INTEGRATED, MAIN_MODEL
from utils.evaluation.predictions import ID_COLUMNS
from utils.evaluation.stats import logit

INTEGRATED_FEATURES: tuple[str, ...] = ("deep_logit", *MARKERS)


# ----------------------------------------------------------------------------- the model
def _log1p_columns(x: np.ndarray, columns: Sequence[int] = ()) -> np.ndarray:
    """log1p of the listed column positions; other columns unchanged."""
    x = np.array(x, dtype=float, copy=True)
    x[:, list(columns)] = np.log1p(x[:, list(columns)])
    return x


def fit_integrated_model(train_df: pd.DataFrame, feature_columns: Sequence[str],
                         label_column: str = "pcr", log_columns: Sequence[str] = (),
                         C: float = 1.0) -> Pipeline:
    """Fit the integrated model (e.g. RP-Net score + CEA + CA19-9) on training data.

    sklearn Pipeline: SimpleImputer (missing values -> training median of the raw column),
    log1p of ``log_columns`` (tumour markers, which must be >= 0), StandardScaler,
    LogisticRegression (lbfgs, L2 penalty with inverse strength ``C`` on the standardised
    scale; ``C=np.inf`` gives plain maximum likelihood). Deterministic: no randomness.
    Predict with ``pipeline.predict_proba(df[feature_columns])[:, 1]``.
    """
    features = list(feature_columns)
    unknown = sorted(set(log_columns) - set(features))
    if unknown:
        raise ValueError(f"log_columns not among feature_columns: {unknown}")
    y = check_binary_labels(train_df[label_column].to_numpy(), name=label_column)
    n_negative = int((train_df[list(log_columns)] < 0).to_numpy().sum())
    if n_negative:
        raise ValueError(f"log_columns contain {n_negative} negative values; log1p needs >= 0")
    log_positions = [features.index(name) for name in log_columns]
    pipeline = Pipeline([
        ("impute", SimpleImputer(strategy="median")),
        ("log1p", FunctionTransformer(_log1p_columns, kw_args={"columns": log_positions})),
        ("scale", StandardScaler()),
        ("logistic", LogisticRegression(C=C, solver="lbfgs", tol=1e-8,
                                         max_iter=10_000)),
    ])
    return pipeline.fit(train_df[features].astype(float), y)


def coefficient_table(pipeline: Pipeline, feature_columns: Sequence[str]) -> pd.DataFrame:
    """Coefficients of a fitted integrated model on the standardised scale.

    Columns: feature, transform ("log1p" or "none"), sd (training SD of the transformed
    feature), coefficient (log-odds per SD), odds_ratio_per_sd = exp(coefficient).
    The intercept is ``pipeline[-1].intercept_``.
    """
    features = list(feature_columns)
    coefficients = pipeline.named_steps["logistic"].coef_.ravel()
    if coefficients.size != len(features):
        raise ValueError(f"pipeline has {coefficients.size} coefficients but "
                         f"{len(features)} feature_columns were given")
    log_positions = pipeline.named_steps["log1p"].kw_args["columns"]
    return pd.DataFrame({
        "feature": features,
        "transform": ["log1p" if i in log_positions else "none" for i in range(len(features))],
        "sd": pipeline.named_steps["scale"].scale_,
        "coefficient": coefficients,
        "odds_ratio_per_sd": np.exp(coefficients),
    })


# ----------------------------------------------------------------------------- fit on a run
@dataclass
class IntegratedModel:
    """The fitted integrated model and where it was fitted."""

    pipeline: object
    features: tuple[str, ...]
    fit_on: str
    n_fit: int
    n_fit_pcr: int
    coefficients: pd.DataFrame = field(repr=False)
    intercept: float = 0.0


def integrated_inputs(scores: pd.DataFrame, patients: pd.DataFrame,
                      main_model: str = MAIN_MODEL) -> pd.DataFrame:
    """One row per patient: ids, pCR, the main model's deep score and its logit
    (``deep_logit``), and the four blood markers from the manifest's patient table."""
    main = scores[scores["model"] == main_model][[*ID_COLUMNS, "score"]]
    markers = patients[["patient_id", *MARKERS]]
    table = main.merge(markers, on="patient_id", how="left")
    return table.assign(deep_logit=logit(table["score"])).reset_index(drop=True)


def fit_integrated(inputs: pd.DataFrame, tune: set[str] | None = None,
                   min_per_class: int = 3, C: float = 1.0,
                   out_of_fold: bool = False) -> IntegratedModel:
    """Logistic regression of ``deep_logit`` + log1p(CEA, CA19-9 pre and post) (median
    imputation, standardisation, L2 with ``C``; :func:`fit_integrated_model`),
    fitted on **training-cohort rows only**.

    Rows: the training cohort's tune subset when it has at least ``min_per_class`` pCR and
    non-pCR patients (its deep scores are out-of-sample: the network never fitted them,
    although they guided model selection); otherwise the whole training cohort, whose deep
    scores are in-sample and optimistic, which inflates the deep-score coefficient.
    ``out_of_fold=True`` (the training scores are out-of-fold readout scores,
    :mod:`utils.training.readout`): the whole training cohort.
    """
    rows, fit_on = _integrated_rows(inputs, tune, min_per_class, out_of_fold)
    pipeline = fit_integrated_model(rows, INTEGRATED_FEATURES, log_columns=MARKERS, C=C)
    return IntegratedModel(pipeline, INTEGRATED_FEATURES, fit_on, len(rows),
                           int(rows["pcr"].sum()),
                           coefficient_table(pipeline, INTEGRATED_FEATURES),
                           float(pipeline[-1].intercept_[0]))


def _integrated_rows(inputs: pd.DataFrame, tune: set[str] | None, min_per_class: int,
                     out_of_fold: bool) -> tuple[pd.DataFrame, str]:
    """The training rows the integrated model is fitted on, and a note saying which."""
    training = inputs[inputs["cohort"] == "training"]
    subset = training[training["patient_id"].isin(tune or set())]
    counts = np.bincount(subset["pcr"].to_numpy(int), minlength=2)
    if out_of_fold:
        return training, "whole training cohort (deep scores out-of-fold)"
    if len(subset) and counts.min() >= min_per_class:
        return subset, "training cohort, tune subset (deep scores out-of-sample)"
    return training, (f"whole training cohort (deep scores in-sample); tune subset has "
                      f"{counts[1]} pCR / {counts[0]} non-pCR, fewer than {min_per_class} "
                      "per class")


def integrated_scores(model: IntegratedModel, inputs: pd.DataFrame) -> pd.DataFrame:
    """Integrated-model probabilities of every patient, as score-table rows."""
    prob = model.pipeline.predict_proba(inputs[list(model.features)].astype(float))[:, 1]
    return inputs[ID_COLUMNS].assign(model=INTEGRATED, score=prob)[["model", *ID_COLUMNS,
                                                                   "score"]]


def tune_ids(split: pd.DataFrame | None) -> set[str]:
    """Training patients of the tune (model-selection) subset in ``split.csv``."""
    if split is None:
        return set()
    for column in split.columns.drop("patient_id", errors="ignore"):
        is_tune = split[column].astype(str).str.lower() == "tune"
        if is_tune.any():
            return set(split.loc[is_tune, "patient_id"].astype(str))
    return set()
