"""Tests of utils.train: split, sampling, augmentation, determinism, resume, predictions."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest

from utils import config
from utils import train as tr
from utils.io import save_npz_atomic
from utils.model import VARIANTS, build_rpnet

ROI = (8, 16, 16)
SPACING = (4.0, 2.0, 2.0)
COHORT_SIZES = {"training": 16, "internal_validation": 4, "external_validation": 4}
CFG = tr.TrainConfig(steps_per_epoch=2, pcr_fraction=0.5, plateau_patience=1)


def tiny_profile() -> config.Profile:
    return config.with_overrides(config.get_profile("smoke"), n_training=16, n_internal=4,
                                 n_external=4, roi_zyx=ROI, spacing_zyx=SPACING, depth=3,
                                 base_filters=4, epochs=2, batch_size=4, learning_rate=1e-3)


def _patient_arrays(rng: np.random.Generator, pcr: int) -> dict[str, np.ndarray]:
    """A bright cube (pre) that shrinks after treatment, more so with pCR."""
    images, masks = [], []
    for half in (3, 1 if pcr else 2):
        mask = np.zeros(ROI, np.uint8)
        c = rng.integers(3, 5), rng.integers(6, 10), rng.integers(6, 10)
        mask[c[0] - 1:c[0] + 1, c[1] - half:c[1] + half, c[2] - half:c[2] + half] = 1
        image = rng.normal(0, 0.3, (*ROI, 2)).astype(np.float32) + 2.0 * mask[..., None]
        images.append(image)
        masks.append(mask)
    return {"image_pre": images[0], "image_post": images[1], "mask_pre": masks[0],
            "mask_post": masks[1], "spacing_zyx": np.array(SPACING),
            "meta_json": np.array(json.dumps({"synthetic": True}))}


def write_synthetic_cohort(root: Path) -> tr.TrainPaths:
    """Contract-format cache, processed.csv and a minimal manifest (no images needed)."""
    rng = np.random.default_rng(0)
    rows = []
    for cohort, n in COHORT_SIZES.items():
        for i in range(n):
            pid = f"{cohort[:2].upper()}{i:03d}"
            pcr = int(i % 3 == 0)
            save_npz_atomic(root / "cache" / f"{pid}.npz", **_patient_arrays(rng, pcr))
            rows.append({"patient_id": pid, "cohort": cohort, "centre": "A" if i % 2 else "B",
                         "timepoint": "pre", "sequence": "T2W", "image_path": f"{pid}.nii.gz",
                         "mask_path": f"{pid}_mask.nii.gz", "pcr": pcr, "cea_pre": 1.0,
                         "cea_post": 1.0, "ca199_pre": 1.0, "ca199_post": 1.0,
                         "image_sha256": "x", "mask_sha256": "y"})
    manifest = pd.DataFrame(rows)
    manifest.to_csv(root / "manifest.csv", index=False)
    manifest.assign(status="ok")[["patient_id", "cohort", "centre", "status"]].to_csv(
        root / "cache" / "processed.csv", index=False)
    return paths_under(root, "run")


def paths_under(root: Path, run: str) -> tr.TrainPaths:
    return tr.TrainPaths(root / "manifest.csv", root / "cache", root / run, root / run / "results")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    write_synthetic_cohort(root)
    return root


@pytest.fixture(scope="module")
def data(cohort: Path) -> tr.TrainData:
    return tr.prepare_data(tiny_profile(), paths_under(cohort, "run_a"), CFG.tune_fraction)


def _weights(path: Path) -> list[np.ndarray]:
    model = keras.saving.load_model(path, compile=False)
    return [np.asarray(w) for w in model.get_weights()]


@pytest.fixture(scope="module")
def runs(cohort: Path, data: tr.TrainData) -> dict[str, object]:
    """Two uninterrupted 2-epoch runs and one run interrupted after 1 epoch, then resumed."""
    prof = tiny_profile()
    out = {}
    for name in ("run_a", "run_b"):
        out[name] = tr.fit_variant("full", data, prof, CFG, paths_under(cohort, name),
                                  resume=False)
    paths_c = paths_under(cohort, "run_c")
    first = tr.fit_variant("full", data, prof, CFG, paths_c, resume=False, stop_after=1)
    log = paths_c.log_csv("full")
    with open(log, "a") as handle:  # an epoch logged but never checkpointed ("crash")
        handle.write("99,junk\n")
    out["interrupted"] = first
    out["run_c"] = tr.fit_variant("full", data, prof, CFG, paths_c, resume=True)
    return out


# --------------------------------------------------------------------------- split, leakage
def test_split_is_training_only_stratified_and_saved(cohort: Path, data: tr.TrainData):
    split = pd.read_csv(paths_under(cohort, "run_a").split_csv, dtype={"patient_id": str})
    assert list(split.columns) == ["patient_id", "subset"]
    assert set(split["subset"]) == {"fit", "tune"}
    cohort_of = data.patients.set_index("patient_id")["cohort"]
    assert set(cohort_of[split["patient_id"]]) == {"training"}
    assert len(split) == COHORT_SIZES["training"]
    tune = data.patients[data.patients["subset"] == "tune"]
    n_pos = int(data.patients.query("cohort == 'training'")["pcr"].sum())
    n_neg = COHORT_SIZES["training"] - n_pos
    assert set(tune["pcr"]) == {0, 1} and len(tune) == round(0.2 * n_pos) + round(0.2 * n_neg)
    again = tr.make_split(data.patients.drop(columns="subset"), 0.2, tiny_profile().seed)
    pd.testing.assert_frame_equal(split, again)


def test_datasets_iterate_only_fit_and_tune_patients(data: tr.TrainData):
    fit, tune = data.ids("fit"), data.ids("tune")
    assert not set(fit) & set(tune)
    ds = tr.RPNetDataset(data.arrays, fit, "full", 4, training=True, pcr_fraction=0.5)
    seen = {p for e in range(3) for p in ds.epoch_order(e)}
    assert seen == set(fit)
    tr.check_no_leak(data, fit + tune)
    with pytest.raises(ValueError, match="validation-cohort"):
        tr.check_no_leak(data, [*fit, data.ids(cohort="external_validation")[0]])


def test_fit_refuses_a_split_that_leaks(cohort: Path, data: tr.TrainData, tmp_path: Path):
    leaky = tr.TrainData(data.patients.copy(), data.arrays, {})
    leaky.patients.loc[leaky.patients["cohort"] == "internal_validation", "subset"] = "tune"
    with pytest.raises(ValueError, match="validation-cohort"):
        tr.fit_variant("full", leaky, tiny_profile(), CFG, paths_under(tmp_path, "leak"))


# --------------------------------------------------------------------------- sampling
def test_balanced_sampling_rate():
    ids = [f"P{i:02d}" for i in range(40)]
    labels = {p: int(i < 10) for i, p in enumerate(ids)}
    epoch = tr.balanced_epoch(ids, labels, 0.5, np.random.default_rng(0))
    positives = [p for p in epoch if labels[p]]
    assert len(positives) == 30 and len(epoch) == 60
    assert all(epoch.count(p) == 3 for p in ids[:10])
    assert all(epoch.count(p) == 1 for p in ids[10:])
    natural = tr.balanced_epoch(ids, labels, None, np.random.default_rng(0))
    assert sorted(natural) == sorted(ids)
    assert tr.epoch_fraction(ids, labels, 0.5) == pytest.approx(0.5)
    assert tr.correct_prior(np.array([0.5]), 0.5, 0.25)[0] == pytest.approx(0.25)


def test_dataset_epochs_hit_the_fraction_and_whole_batches(data: tr.TrainData):
    ds = tr.RPNetDataset(data.arrays, data.ids("fit"), "full", 4, training=True,
                        pcr_fraction=0.5)
    order = ds.epoch_order(0)
    assert len(order) % 4 == 0
    frac = np.mean([data.arrays[p].pcr for p in order])
    assert abs(frac - 0.5) < 0.1
    fixed = tr.RPNetDataset(data.arrays, data.ids("fit"), "full", 4, training=True,
                           pcr_fraction=0.5, steps_per_epoch=7)
    assert len(fixed) == 7 and len(fixed.epoch_order(2)) == 28


# --------------------------------------------------------------------------- augmentation
def _cube_image() -> tuple[np.ndarray, np.ndarray]:
    mask = np.zeros((12, 32, 32), np.uint8)
    mask[4:9, 8:20, 11:24] = 1
    return mask[..., None].astype(np.float32).repeat(2, -1), mask


def test_augmentation_keeps_masks_aligned_with_images():
    image, mask = _cube_image()
    cfg = tr.AugmentConfig(rotate_deg=10, scale=0.1)
    for seed in range(6):
        params = tr.spatial_params(np.random.default_rng(seed), cfg)
        params["angle"] = 10.0 if seed % 2 else -10.0  # the largest rotations
        (img_pre, img_post), (m_pre, m_post) = tr.apply_spatial([image, image], [mask, mask],
                                                               params, (4.0, 2.0, 2.0))
        np.testing.assert_array_equal(m_pre, m_post)
        np.testing.assert_array_equal(img_pre, img_post)
        bright = img_pre[..., 0] >= 0.5
        dice = 2 * (bright & (m_pre > 0)).sum() / (bright.sum() + m_pre.sum())
        assert dice > 0.9, (seed, params, dice)
        assert m_pre.dtype == np.uint8 and set(np.unique(m_pre)) <= {0, 1}


def test_spatial_transform_of_a_flip_only_is_exact():
    image, mask = _cube_image()
    params = {"angle": 0.0, "scale": 1.0, "flips": (2,)}
    (img,), (msk,) = tr.apply_spatial([image], [mask], params, (4.0, 2.0, 2.0))
    np.testing.assert_array_equal(msk, mask[:, :, ::-1])
    np.testing.assert_allclose(img, image[:, :, ::-1], atol=1e-6)


def test_augmentation_is_deterministic_per_seed_epoch_index(data: tr.TrainData):
    def dataset() -> tr.RPNetDataset:
        return tr.RPNetDataset(data.arrays, data.ids("fit"), "full", 4, training=True,
                              seed=5, pcr_fraction=0.5, epoch=3)

    a, b = dataset(), dataset()
    later = b[2]  # other batches first: no dependence on fetch order
    first = a[0]
    for key in first[0]:
        np.testing.assert_array_equal(first[0][key], b[0][0][key])
        np.testing.assert_array_equal(a[2][0][key], later[0][key])
    for key in first[1]:
        np.testing.assert_array_equal(first[1][key], b[0][1][key])
    b.epoch = 4
    assert not np.array_equal(first[0]["pre"], b[0][0]["pre"])
    assert set(first[0]) == {"pre", "post"}
    assert first[1]["mask_pre"].shape == (4, *ROI, 1) and first[1]["pcr"].shape == (4, 1)


def test_intensity_augmentation_changes_values_not_shape():
    image = np.random.default_rng(0).normal(size=(*ROI, 2)).astype(np.float32)
    cfg = tr.AugmentConfig(intensity_prob=1.0)
    out = tr.augment_intensity(image, np.random.default_rng(1), cfg)
    assert out.shape == image.shape and out.dtype == np.float32
    assert not np.allclose(out, image)
    assert np.corrcoef(out.ravel(), image.ravel())[0, 1] > 0.8


def test_dataset_filters_to_variant_inputs_and_outputs(data: tr.TrainData):
    for variant in ("pre_only", "single_task"):
        ds = tr.RPNetDataset(data.arrays, data.ids("fit"), variant, 2)
        x, y = ds[0]
        assert set(x) == set(VARIANTS[variant].inputs)
        assert set(y) == set(VARIANTS[variant].outputs)


# --------------------------------------------------------------------------- schedules
def test_plateau_halving_and_cosine():
    cfg = tr.TrainConfig(schedule="plateau", plateau_patience=2, early_stopping_patience=3,
                        learning_rate=1e-3, epochs=10)
    state = tr.RunState(learning_rate=1e-3)
    for value in (1.0, 0.9, 0.95, 0.95):
        tr.update_state(state, cfg, {"tune_loss": value})
    assert state.learning_rate == pytest.approx(5e-4) and state.best_epoch == 1
    tr.update_state(state, cfg, {"tune_loss": 0.95})
    assert state.stopped_early
    cosine = tr.TrainConfig(schedule="cosine", learning_rate=1e-3, epochs=10)
    lrs = [tr.next_learning_rate(tr.RunState(), cosine, e) for e in range(10)]
    assert lrs[0] == pytest.approx(1e-3) and all(np.diff(lrs) < 0)
    assert tr.TrainConfig.authors().optimizer == "sgd"


# --------------------------------------------------------------------------- determinism
def test_two_runs_give_identical_weights(cohort: Path, runs: dict):
    a = _weights(paths_under(cohort, "run_a").checkpoints_dir / "full" / "epoch_002.keras")
    b = _weights(paths_under(cohort, "run_b").checkpoints_dir / "full" / "epoch_002.keras")
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


def test_resume_after_interruption_equals_uninterrupted(cohort: Path, runs: dict):
    assert runs["interrupted"].interrupted and runs["interrupted"].epochs_run == 1
    assert runs["run_c"].epochs_run == 1 and not runs["run_c"].interrupted
    a = _weights(paths_under(cohort, "run_a").checkpoints_dir / "full" / "epoch_002.keras")
    c = _weights(paths_under(cohort, "run_c").checkpoints_dir / "full" / "epoch_002.keras")
    for x, y in zip(a, c, strict=True):
        np.testing.assert_allclose(x, y, rtol=0, atol=1e-6)
    log_a = pd.read_csv(paths_under(cohort, "run_a").log_csv("full"))
    log_c = pd.read_csv(paths_under(cohort, "run_c").log_csv("full"))
    assert list(log_c["epoch"]) == [0, 1]
    pd.testing.assert_frame_equal(log_a, log_c, atol=1e-6)


def test_run_outputs_and_model_card(cohort: Path, runs: dict):
    paths = paths_under(cohort, "run_a")
    result = runs["run_a"]
    assert result.model_path == paths.models_dir / "full.keras" and result.model_path.exists()
    card = tr.read_model_card(result.model_path)
    assert card["roi_zyx"] == list(ROI) and 0 < card["prevalence"] < 0.5
    assert card["train_pcr_fraction"] == pytest.approx(0.5, abs=0.1)
    log = pd.read_csv(paths.log_csv("full"))
    for column in ("loss", "tune_loss", "tune_pcr_auc", "tune_mask_pre_dice", "lr"):
        assert column in log, column
    state = json.loads((paths.checkpoints_dir / "full" / tr.STATE_FILE).read_text())
    assert state["done"] and state["epoch"] == 2 and state["checkpoint"] == "epoch_002.keras"
    readout = card["readout"]
    assert not card["prior_correction"] and readout["k_folds"] == 5
    assert readout["features"] in {row["features"] for row in readout["cv"]}
    model = keras.saving.load_model(result.model_path, compile=False)
    assert np.abs(model.get_layer("pcr").get_weights()[0]).sum() > 0  # the refitted unit
    oof = pd.read_csv(paths.readout_dir / "full.csv", dtype={"patient_id": str})
    assert len(oof) == COHORT_SIZES["training"] and oof["oof_score"].between(0, 1).all()
    again = tr.fit_variant("full", tr.prepare_data(tiny_profile(), paths), tiny_profile(), CFG,
                          paths)
    assert again.skipped


# --------------------------------------------------------------------------- predictions
def test_train_all_writes_predictions(cohort: Path, runs: dict, capsys):
    paths = paths_under(cohort, "run_a")
    variants = ("full", "single_task")
    table = tr.train_all(tiny_profile(), variants, CFG, paths, seeds={"full": 2},
                         progress=False)
    written = pd.read_csv(paths.predictions_csv, dtype={"patient_id": str})
    assert list(written.columns) == tr.PREDICTION_COLUMNS
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


def test_prediction_columns_of_a_one_mask_variant(data: tr.TrainData):
    patient = data.arrays[data.ids(cohort="internal_validation")[0]]
    pred = {"mask_post": patient.mask_post[None, ..., None].astype(np.float32)}
    row, masks = tr._mask_columns(patient, pred, 0)
    assert set(masks) == {"mask_post"}
    assert np.isnan(row["dice_pre"]) and np.isnan(row["vol_pre_pred_ml"])
    assert row["dice_post"] == pytest.approx(1.0)
    assert row["vol_post_pred_ml"] == pytest.approx(row["vol_post_true_ml"])
    assert row["vol_pre_true_ml"] == pytest.approx(patient.mask_pre.sum() * np.prod(SPACING) / 1e3)


def test_plot_training_curves(cohort: Path, runs: dict):
    paths = paths_under(cohort, "run_a")
    fig = tr.plot_training_curves({"full": paths.log_csv("full")})
    assert len(fig.axes) == 4  # loss, pCR loss, Dice, AUC


def test_outputs_are_float32_under_mixed_precision():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = build_rpnet((*ROI, 2), "full", depth=3, base_filters=4)
        assert {str(t.dtype) for t in model.outputs} == {"float32"}
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_device_summary_mentions_backend():
    assert keras.backend.backend() in tr.device_summary()


_FRESH_RUN = textwrap.dedent("""
    import sys
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    from test_train import CFG, paths_under, tiny_profile
    from utils import train as tr
    root = Path({root!r})
    paths = paths_under(root, sys.argv[1])
    data = tr.prepare_data(tiny_profile(), paths)
    tr.fit_variant("full", data, tiny_profile(), CFG, paths, resume=False)
""")


def test_fresh_processes_give_identical_weights(cohort: Path):
    """Two trainings (two epochs, shuffled balanced batches, augmentation, readout refit) in
    two fresh Python processes end with bit-identical weights."""
    script = _FRESH_RUN.format(tests=str(Path(__file__).parent), root=str(cohort))
    for run in ("fresh_a", "fresh_b"):
        subprocess.run([sys.executable, "-c", script, run], check=True, timeout=600,
                       cwd=config.ROOT)
    a = _weights(paths_under(cohort, "fresh_a").models_dir / "full.keras")
    b = _weights(paths_under(cohort, "fresh_b").models_dir / "full.keras")
    assert len(a) == len(b) > 0
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
