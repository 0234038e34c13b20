"""The score table: one score per model and patient for every model in the predictions plus
the reference scores (volume reduction from ground-truth and predicted masks, and, for the
phantom, the oracle and the image-only oracle)."""

from __future__ import annotations

import pandas as pd

from utils.evaluation.labels import IMAGE_ORACLE, MAIN_MODEL, ORACLE, VOLUME_GT, VOLUME_PRED
from utils.evaluation.predictions import ID_COLUMNS
from utils.measures import volume_reduction


def score_table(predictions: pd.DataFrame, oracle: pd.DataFrame | None = None,
                main_model: str = MAIN_MODEL) -> pd.DataFrame:
    """Long table ``model, patient_id, cohort, centre, pcr, score`` of every model in
    ``predictions`` (one row per patient: seed-average them first, :func:`seed_average`) plus
    the baselines: volume reduction from ground-truth and from the main model's predicted
    masks, and, for the phantom, the oracle (true pCR probability) and the image-only oracle
    (the latent imaging response ``z_img``, the ceiling for an imaging model)."""
    main = predictions[predictions["model"] == main_model]
    if main.empty:
        raise ValueError(f"no rows for the main model {main_model!r}; models present: "
                         f"{sorted(predictions['model'].unique())}")
    ids = main[ID_COLUMNS].reset_index(drop=True)
    parts = [predictions[["model", *ID_COLUMNS, "score"]], *_volume_parts(main, ids)]
    if oracle is not None:
        parts += _oracle_parts(oracle, ids)
    table = pd.concat(parts, ignore_index=True)[["model", *ID_COLUMNS, "score"]]
    return table.astype({"score": float, "pcr": int})


def _volume_parts(main: pd.DataFrame, ids: pd.DataFrame) -> list[pd.DataFrame]:
    """Volume-reduction score rows from the ground-truth and the predicted volumes."""
    parts = []
    for name, kind in ((VOLUME_GT, "true"), (VOLUME_PRED, "pred")):
        columns = [f"vol_pre_{kind}_ml", f"vol_post_{kind}_ml"]
        if set(columns) <= set(main.columns):
            score = volume_reduction(main[columns[0]], main[columns[1]])
            parts.append(ids.assign(model=name, score=score))
    return parts


def _oracle_parts(oracle: pd.DataFrame, ids: pd.DataFrame) -> list[pd.DataFrame]:
    """Oracle (``p_true``) and image-only oracle (``z_img``) score rows."""
    parts = []
    for name, column in ((ORACLE, "p_true"), (IMAGE_ORACLE, "z_img")):
        if column in oracle.columns:
            merged = ids.merge(oracle[["patient_id", column]], on="patient_id", how="left")
            parts.append(merged.rename(columns={column: "score"}).assign(model=name))
    return parts
