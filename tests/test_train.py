"""Tests of training (utils.training.fit, runner, callbacks, curves) and batch inference:
determinism, resume, run outputs, model card, predictions, figures."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest

from tests.synthetic import (
    CFG,
    COHORT_SIZES,
    PROFILE,
    ROI,
    SPACING,
    paths_under,
)
from utils.inference import batch as inf
from utils.model.rpnet import build_rpnet
from utils.training.callbacks import cosine_learning_rate, schedule_callbacks
from utils.training.config import TrainConfig
from utils.training.curves import plot_training_curves
from utils.training.distribute import device_summary
from utils.training.fit import fit_variant
from utils.training.modelcard import read_model_card
from utils.training.patients import TrainData, prepare_data
from utils.training.runner import RUN_COLUMNS, train_all


@pytest.fixture(scope="module")
def runs(cohort: Path, data: TrainData) -> dict[str, object]:
    """One uninterrupted 2-epoch run (determinism and resume: test_resume.py)."""
    return {"run_a": fit_variant("full", data, PROFILE, CFG,
                                 paths_under(cohort, "run_a"), resume=False)}


# --------------------------------------------------------------------------- leakage
def test_fit_refuses_a_split_that_leaks(cohort: Path, data: TrainData, tmp_path: Path):
    leaky = TrainData(data.patients.copy(), data.arrays, {})
    leaky.patients.loc[leaky.patients["cohort"] == "internal_validation", "subset"] = "tune"
    with pytest.raises(ValueError, match="validation-cohort"):
        fit_variant("full", leaky, PROFILE, CFG, paths_under(tmp_path, "leak"))


# --------------------------------------------------------------------------- schedules
def _epoch_ends(callbacks: dict, values: list[float]) -> keras.Model:
    """Feed tune losses to configured callbacks as ``fit`` would; returns their model."""
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    for callback in callbacks.values():
        callback.set_model(model)
        callback.on_train_begin()
    for epoch, value in enumerate(values):
        for callback in callbacks.values():
            callback.on_epoch_end(epoch, {"val_loss": value})
    return model


def test_plateau_halving_early_stopping_and_cosine():
    cfg = TrainConfig(schedule="plateau", plateau_patience=2, early_stopping_patience=3,
                        learning_rate=1e-3, epochs=10)
    callbacks = schedule_callbacks(cfg)
    model = _epoch_ends(callbacks, [1.0, 0.9, 0.95, 0.95])  # two epochs without improvement
    assert float(model.optimizer.learning_rate) == pytest.approx(5e-4)
    assert not model.stop_training
    _epoch_ends(callbacks, [1.0, 0.9, 0.95, 0.95, 0.95])  # a third one: stop
    assert callbacks["stopping"].model.stop_training
    cosine = TrainConfig(schedule="cosine", learning_rate=1e-3, epochs=10)
    lrs = [cosine_learning_rate(cosine, e) for e in range(10)]
    assert lrs[0] == pytest.approx(1e-3) and all(np.diff(lrs) < 0)
    assert set(schedule_callbacks(cosine)) == {"cosine"}
    with pytest.raises(ValueError, match="unknown schedule"):
        schedule_callbacks(TrainConfig(schedule="step"))
    assert TrainConfig.authors().optimizer == "sgd"


def test_run_outputs_and_model_card(cohort: Path, runs: dict):
    paths = paths_under(cohort, "run_a")
    result = runs["run_a"]
    assert result.model_path == paths.models_dir / "full.keras" and result.model_path.exists()
    card = read_model_card(result.model_path)
    assert card["roi_zyx"] == list(ROI) and 0 < card["prevalence"] < 0.5
    assert card["train_pcr_fraction"] == pytest.approx(0.5, abs=0.1)
    log = pd.read_csv(paths.log_csv("full"))
    for column in ("loss", "val_loss", "val_pcr_auc", "val_mask_pre_dice", "learning_rate"):
        assert column in log, column
    assert list(log["epoch"]) == [0, 1]
    state = json.loads((paths.checkpoints_dir / "full" / "epoch_002.json").read_text())
    assert state["done"] and state["epoch"] == 2 and state["best_epoch"] == result.best_epoch
    assert card["best_metric"] == log["val_loss"].min() == result.best_metric
    readout = card["readout"]
    assert not card["prior_correction"] and readout["k_folds"] == 5
    assert readout["features"] in {row["features"] for row in readout["cv"]}
    model = keras.saving.load_model(result.model_path, compile=False)
    assert np.abs(model.get_layer("pcr").get_weights()[0]).sum() > 0  # the refitted unit
    oof = pd.read_csv(paths.readout_dir / "full.csv", dtype={"patient_id": str})
    assert len(oof) == COHORT_SIZES["training"] and oof["oof_score"].between(0, 1).all()
    again = fit_variant("full", prepare_data(PROFILE, paths), PROFILE, CFG,
                          paths)
    assert again.skipped


def _scalars(folder: Path) -> dict[str, list[float]]:
    """Every scalar series in a TensorBoard log folder, read back by TensorBoard itself."""
    import tensorflow as tf
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"tensors": 0})
    events.Reload()
    return {tag: [float(tf.make_ndarray(e.tensor_proto)) for e in events.Tensors(tag)]
            for tag in events.Tags()["tensors"]}


def test_training_writes_tensorboard_logs_beside_the_csv(cohort: Path, runs: dict):
    paths = paths_under(cohort, "run_a")
    log = pd.read_csv(paths.log_csv("full"))
    train = _scalars(paths.tensorboard_dir("full") / "train")
    tune = _scalars(paths.tensorboard_dir("full") / "validation")
    for tag, column in (("epoch_loss", "loss"), ("epoch_learning_rate", "learning_rate"),
                        ("epoch_mask_pre_dice", "mask_pre_dice")):
        np.testing.assert_allclose(train[tag], log[column], rtol=1e-5, err_msg=tag)
    for tag in ("epoch_loss", "epoch_pcr_auc", "epoch_mask_pre_dice", "epoch_mask_post_dice"):
        np.testing.assert_allclose(tune[tag], log[f"val_{tag[6:]}"], rtol=1e-5, err_msg=tag)


# --------------------------------------------------------------------------- predictions
def test_train_all_writes_predictions(cohort: Path, runs: dict, capsys):
    paths = paths_under(cohort, "run_a")
    variants = ("full", "single_task")
    data = prepare_data(PROFILE, paths)
    trained = train_all(PROFILE, variants, CFG, paths, seeds={"full": 2},
                        progress=False, data=data)
    assert list(trained["run"]) == ["full", "full_seed1", "single_task"]
    assert list(trained.columns) == RUN_COLUMNS
    table = inf.predict_runs(paths, trained["run"], data)
    written = pd.read_csv(paths.predictions_csv, dtype={"patient_id": str})
    assert list(written.columns) == inf.PREDICTION_COLUMNS
    assert len(written) == len(table) == sum(COHORT_SIZES.values()) * 3  # full x 2, single x 1
    assert sorted(written.groupby("model")["seed"].unique().map(list).to_dict().items()) == [
        ("full", [0, 1]), ("single_task", [0])]
    replicas = written[written["model"] == "full"].pivot(index="patient_id", columns="seed",
                                                         values="score")
    assert not np.allclose(replicas[0], replicas[1])  # another seed, another network
    training = written[written["cohort"] == "training"]
    assert (training["score_source"] == "out_of_fold").all()
    assert (written.loc[written["cohort"] != "training", "score_source"] == "model").all()
    folds = pd.read_csv(paths.folds_csv, dtype={"patient_id": str})
    assert set(folds["patient_id"]) == set(training["patient_id"])
    assert written["score"].between(0, 1).all()
    assert set(written["cohort"]) == set(COHORT_SIZES)
    by = written.set_index("model")
    assert by.loc["single_task", ["dice_pre", "dice_post", "vol_pre_pred_ml"]].isna().all().all()
    assert by.loc["single_task", ["vol_pre_true_ml", "vol_post_true_ml"]].notna().all().all()
    assert by.loc["full", ["dice_pre", "dice_post", "vol_pre_pred_ml"]].notna().all().all()
    masks = np.load(paths.predicted_masks_dir / "full" / "IN000.npz")
    assert masks["mask_pre"].dtype == np.uint8 and masks["mask_pre"].shape == ROI
    assert not (paths.predicted_masks_dir / "single_task").exists()
    out = capsys.readouterr().out
    assert len(out.splitlines()) <= 1 + 2 * 3


def test_prediction_columns_of_a_one_mask_variant(data: TrainData):
    patient = data.arrays[data.ids(cohort="internal_validation")[0]]
    pred = {"mask_post": patient.mask_post[None, ..., None].astype(np.float32)}
    row, masks = inf._mask_columns(patient, pred, 0)
    assert set(masks) == {"mask_post"}
    assert np.isnan(row["dice_pre"]) and np.isnan(row["vol_pre_pred_ml"])
    assert row["dice_post"] == pytest.approx(1.0)
    assert row["vol_post_pred_ml"] == pytest.approx(row["vol_post_true_ml"])
    assert row["vol_pre_true_ml"] == pytest.approx(patient.mask_pre.sum() * np.prod(SPACING) / 1e3)


def test_plot_training_curves(cohort: Path, runs: dict):
    paths = paths_under(cohort, "run_a")
    fig = plot_training_curves({"full": paths.log_csv("full")})
    assert len(fig.axes) == 4  # loss, pCR loss, Dice, AUC
    assert [len(ax.lines) for ax in fig.axes] == [2, 2, 2, 1]  # fit and tune (val_*) curves


def test_outputs_are_float32_under_mixed_precision():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = build_rpnet((*ROI, 2), "full", depth=3, base_filters=4)
        assert {str(t.dtype) for t in model.outputs} == {"float32"}
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_device_summary_mentions_backend():
    assert keras.backend.backend() in device_summary()
