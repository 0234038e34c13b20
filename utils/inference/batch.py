"""Batch inference of trained runs: every loaded patient once, and ``predictions.csv``.

:func:`predict_runs` is the step after training (:func:`utils.training.runner.train_all`): it
predicts every patient with each trained run and writes ``results/predictions.csv``.
:func:`predict_variant` predicts all cohorts with a run's selected model (training patients
get their out-of-fold readout score when the run has one) and writes its predicted masks and
``predictions/<run>.csv``; :func:`write_predictions` combines the runs into
``results/predictions.csv`` (:data:`PREDICTION_COLUMNS`). One new patient from NIfTI files:
:mod:`utils.inference.predict`. ``python -m utils.inference.batch --profile P [--manifest M]
[--cache DIR] [--out DIR] [--runs RUN ...]`` predicts every patient with the trained runs.
Importing this module does not import Keras (:mod:`utils.evaluation` reads
:data:`PREDICTION_COLUMNS`); the functions that need it import it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from utils import measures
from utils.io import save_npz_atomic, write_atomic
from utils.training.modelcard import read_model_card, run_name, score_from_card

if TYPE_CHECKING:
    import argparse

    from utils.config import Paths
    from utils.training.patients import PatientArrays, TrainData


def load_predicted_masks(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """One run's predicted masks of one patient (the file :func:`predict_variant` writes):
    ``mask_pre`` and/or ``mask_post`` (uint8, ROI grid) and ``spacing_zyx``."""
    with np.load(path, allow_pickle=False) as data:
        return {name: data[name] for name in data.files}


PREDICTION_COLUMNS = ["model", "seed", "patient_id", "cohort", "centre", "pcr", "score",
                      "score_source",
                      "vol_pre_true_ml", "vol_post_true_ml", "vol_pre_pred_ml", "vol_post_pred_ml",
                      "dice_pre", "dice_post"]


def predict_arrays(model: Any, x: Mapping[str, np.ndarray], batch_size: int
                   ) -> dict[str, np.ndarray]:
    """``model.predict`` padded to whole batches (one traced shape), as float32 NumPy."""
    n = len(next(iter(x.values())))
    pad = (-n) % batch_size
    padded = {k: np.concatenate([v, np.repeat(v[-1:], pad, 0)]) if pad else v
              for k, v in x.items()}
    out = model.predict(padded, batch_size=batch_size, verbose=0)
    return {k: np.asarray(v, dtype=np.float32)[:n] for k, v in out.items()}


def _volume(mask: np.ndarray, spacing: np.ndarray) -> float:
    return measures.volume_ml(mask, spacing)


def _mask_columns(p: PatientArrays, pred: Mapping[str, np.ndarray], i: int
                  ) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    row: dict[str, float] = {}
    masks: dict[str, np.ndarray] = {}
    for tp in ("pre", "post"):
        true = p.mask(tp)
        row[f"vol_{tp}_true_ml"] = _volume(true, p.spacing_zyx)
        key = f"mask_{tp}"
        if key in pred:
            mask = (pred[key][i, ..., 0] >= 0.5).astype(np.uint8)
            masks[key] = mask
            row[f"vol_{tp}_pred_ml"] = _volume(mask, p.spacing_zyx)
            row[f"dice_{tp}"] = measures.dice(mask, true)
        else:
            row[f"vol_{tp}_pred_ml"] = row[f"dice_{tp}"] = np.nan
    return row, masks


def out_of_fold_scores(paths: Paths, run: str) -> dict[str, float]:
    """Training patients' out-of-fold readout scores of one run (empty without a readout)."""
    path = paths.readout_csv(run)
    if not path.exists():
        return {}
    table = pd.read_csv(path, dtype={"patient_id": str})
    return dict(zip(table["patient_id"], table["oof_score"], strict=True))


def predict_variant(variant: str, model: Any, data: TrainData, paths: Paths,
                    batch_size: int = 4, replica: int = 0) -> pd.DataFrame:
    """Predict every loaded patient (all cohorts) once with the selected model.

    ``model`` is the trained model in memory or a ``.keras`` path. Training-cohort patients
    get their out-of-fold readout score (:mod:`utils.training.readout`) when the run has one. Writes
    ``predicted_masks/<run>/<patient>.npz`` (the variant's masks only; none for
    single_task) and ``predictions/<run>.csv``; returns the rows of predictions.csv.
    """
    from utils.model.compile import load_rpnet
    from utils.training.dataset import stacked_inputs

    if isinstance(model, str | os.PathLike):
        model = load_rpnet(model, compile=False)
    run = run_name(variant, replica)
    card = read_model_card(paths.model_file(run))
    ids = sorted(data.arrays)
    x, _ = stacked_inputs(data, ids, variant)
    pred = predict_arrays(model, x, batch_size)
    scores = score_from_card(pred["pcr"][:, 0], card)
    oof = out_of_fold_scores(paths, run)
    rows = []
    for i, pid in enumerate(ids):
        p = data.arrays[pid]
        cols, masks = _mask_columns(p, pred, i)
        rows.append({"model": variant, "seed": replica, "patient_id": pid, "cohort": p.cohort,
                     "centre": p.centre, "pcr": p.pcr,
                     "score": float(oof.get(pid, scores[i])),
                     "score_source": "out_of_fold" if pid in oof else "model", **cols})
        if masks:
            save_npz_atomic(paths.predicted_masks_file(run, pid), **masks,
                            spacing_zyx=p.spacing_zyx)
    table = pd.DataFrame(rows, columns=PREDICTION_COLUMNS)
    target = paths.run_predictions_csv(run)
    write_atomic(target, lambda tmp: table.to_csv(tmp, index=False))
    return table


def write_predictions(paths: Paths, runs: Sequence[str] | None = None) -> pd.DataFrame:
    """Combine per-run tables into ``results/predictions.csv`` (atomically).

    ``runs``: run names (:func:`utils.training.modelcard.run_name`) to include, in order; default
    every table in ``runs/<profile>/predictions/``.
    """
    if runs is None:
        runs = sorted(p.stem for p in paths.predictions_dir.glob("*.csv"))
    frames = [pd.read_csv(paths.run_predictions_csv(r), dtype={"patient_id": str})
              for r in runs if paths.run_predictions_csv(r).exists()]
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=PREDICTION_COLUMNS)
    write_atomic(paths.predictions_csv, lambda tmp: table.to_csv(tmp, index=False))
    return table


def predict_runs(paths: Paths, runs: Iterable[str], data: TrainData, *,
                 batch_size: int | None = None) -> pd.DataFrame:
    """Predict every loaded patient with each trained run (``models/<run>.keras`` and its card:
    variant, replica, batch size), print one summary line per run and write
    ``results/predictions.csv`` after each run (partial results survive a crash); returns it.

    A run whose ``predictions/<run>.csv`` is newer than its model is not predicted again.
    """
    runs = list(runs)
    for i, run in enumerate(runs):
        model_path, table_path = paths.model_file(run), paths.run_predictions_csv(run)
        if table_path.exists() and table_path.stat().st_mtime >= model_path.stat().st_mtime:
            table, status = pd.read_csv(table_path, dtype={"patient_id": str}), "cached"
        else:
            card = read_model_card(model_path) or {}
            table = predict_variant(card.get("variant", run), model_path, data, paths,
                                    batch_size or card.get("config", {}).get("batch_size", 4),
                                    int(card.get("seed", 0)))
            status = "predicted"
        print(prediction_summary(run, table, status))
        write_predictions(paths, runs[:i + 1])
    return write_predictions(paths, runs)


def prediction_summary(run: str, table: pd.DataFrame, status: str = "") -> str:
    """One line per run: validation AUCs and the mean validation Dice of the pre mask."""
    parts = [f"{run:>18}:"]
    for cohort in ("internal_validation", "external_validation"):
        rows = table[table["cohort"] == cohort]
        if len(rows) and rows["pcr"].nunique() == 2:
            auc = measures.auc_or_nan(rows["pcr"], rows["score"])
            parts.append(f"AUC {cohort.split('_')[0][:3]} {auc:.3f},")
    val = table[table["cohort"] != "training"]
    if val["dice_pre"].notna().any():
        parts.append(f"Dice pre {val['dice_pre'].mean():.3f},")
    return " ".join(parts).rstrip(",") + (f" ({status})" if status else "")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m utils.inference.batch``: predict every patient with the trained runs."""
    import argparse
    import sys

    from utils.config import add_run_options, parse_run_args
    from utils.training.patients import prepare_data

    cli = argparse.ArgumentParser(prog="python -m utils.inference.batch", description=(
        "Predict every preprocessed patient with each trained run; writes predicted masks, "
        "predictions/<run>.csv and results/predictions.csv."))
    add_run_options(cli, "the run folder given to python -m utils.training (default: the "
                    "profile's)")
    cli.add_argument("--runs", nargs="+", default=None, help="default: every trained run")
    if (parsed := parse_run_args(cli, argv, _missing_models)) is None:
        return 1
    args, profile, paths = parsed
    try:
        data = prepare_data(profile, paths)
    except (FileNotFoundError, ValueError) as error:  # a bad manifest, cache or cohort
        print(f"error: {error}", file=sys.stderr)
        return 1
    predict_runs(paths, args.runs or paths.trained_runs(), data)
    print(f"wrote {paths.predictions_csv}")
    return 0


def _missing_models(args: argparse.Namespace, paths: Paths) -> list[str]:
    """The trained runs ``--runs`` names (default: all) that have no model file."""
    runs = args.runs or paths.trained_runs()
    missing = [r for r in runs if not paths.model_file(r).exists()]
    if runs and not missing:
        return []
    return [f"no trained model {', '.join(missing)} in {paths.models_dir}: run python -m "
            "utils.training with the same --profile/--out first"]


if __name__ == "__main__":
    raise SystemExit(main())
