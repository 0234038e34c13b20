"""Tests of utils.evaluation.explain: Grad-CAM and input x gradient maps on a tiny RP-Net."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from utils.evaluation import explain as xp


@pytest.fixture(scope="module")
def tiny_rpnet():
    from utils.model.rpnet import build_rpnet, head_vector_model, set_readout

    model = build_rpnet((8, 16, 16, 2), "full", depth=3, base_filters=2, seed=1,
                        pcr_gradient=True)
    width = head_vector_model(model).output.shape[-1]
    set_readout(model, np.linspace(-1, 1, width), 0.0)  # a readout that uses every feature
    return model


def test_grad_cam_on_rpnet_finds_both_branches_and_maps_at_input_resolution(tiny_rpnet):
    rng = np.random.default_rng(0)
    inputs = {b: rng.normal(size=(8, 16, 16, 2)).astype(np.float32) for b in ("pre", "post")}
    features = xp.branch_feature_tensors(tiny_rpnet, "encoder")
    assert set(features) == {"pre", "post"}
    maps = xp.grad_cam_3d(tiny_rpnet, inputs, features)
    assert {name: cam.shape for name, cam in maps.items()} == {"pre": (8, 16, 16),
                                                                "post": (8, 16, 16)}
    bottleneck = xp.grad_cam_3d(tiny_rpnet, inputs, key="bottleneck", target_class=0)
    assert bottleneck["pre"].shape == (8, 16, 16)


BOX = (slice(4, 8), slice(8, 16), slice(0, 8))  # the planted signal in an (8, 16, 16) volume
WEIGHTS = np.array([0.08, -0.05], np.float32)  # per-channel weights of the box model's logit


def _box(shape=(8, 16, 16), where=BOX) -> np.ndarray:
    box = np.zeros(shape, np.float32)
    box[where] = 1.0
    return box


def box_model(where=BOX, branches=("pre", "post")):
    """pCR = sigmoid(sum over the box of the channels times WEIGHTS, summed over the
    ``branches``): the output depends on the voxels inside the box only."""
    import keras

    box = _box(where=where)[None, ..., None] * WEIGHTS
    inputs = {name: keras.Input((8, 16, 16, 2), name=name) for name in ("pre", "post")}

    def box_logit(x):
        return keras.ops.sum(x * box, axis=(1, 2, 3, 4))[:, None]

    logits = [keras.layers.Lambda(box_logit, name=f"box_{b}")(inputs[b]) for b in branches]
    total = logits[0] if len(logits) == 1 else keras.layers.Add()(logits)
    pcr = keras.layers.Activation("sigmoid", name="pcr")(total)
    return keras.Model(inputs, {"pcr": pcr})


def test_grad_cam_mass_falls_in_the_planted_box_after_upsampling():
    import keras

    image = keras.Input((8, 16, 16, 1), name="pre")
    features = keras.layers.Conv3D(2, 2, strides=2, activation="relu", name="features",
                                   kernel_initializer="ones")(image)  # half resolution
    pcr = keras.layers.Dense(1, activation="sigmoid", kernel_initializer="ones", name="pcr")(
        keras.layers.GlobalAveragePooling3D()(features))
    model = keras.Model(image, {"pcr": pcr})
    x = _box()[..., None]  # the only signal: the model's evidence comes from the box
    cam = xp.grad_cam_3d(model, {"pre": x}, {"pre": model.get_layer("features").output})["pre"]
    assert cam.shape == (8, 16, 16)
    assert cam[BOX].sum() / cam.sum() > 0.8  # a shifted or transposed resize fails this
    assert _box()[np.unravel_index(np.argmax(cam), cam.shape)] == 1.0


def test_grad_cam_is_highest_where_the_model_looks():
    import keras

    image = keras.Input((4, 8, 8, 1), name="pre")
    features = keras.layers.Conv3D(2, 1, activation="relu", kernel_initializer="ones",
                                   name="features")(image)
    pooled = keras.layers.GlobalAveragePooling3D()(features)
    pcr = keras.layers.Dense(1, activation="sigmoid", kernel_initializer="ones", name="pcr")(
        pooled)
    model = keras.Model(image, {"pcr": pcr})
    x = np.zeros((4, 8, 8, 1), np.float32)
    x[1:3, 1:3, 5:7] = 1.0  # the only signal: the model's evidence comes from here
    cam = xp.grad_cam_3d(model, {"pre": x}, {"pre": model.get_layer("features").output})["pre"]
    inside, outside = cam[1:3, 1:3, 5:7], cam[:, 4:, :3]
    assert inside.min() > 0.5 and outside.max() < 0.1


def test_input_attribution_is_input_times_gradient_of_the_planted_box():
    rng = np.random.default_rng(1)
    inputs = {b: rng.normal(size=(8, 16, 16, 2)).astype(np.float32) for b in ("pre", "post")}
    model = box_model(branches=("pre",))  # the post-treatment exam is ignored
    for target_class, sign in ((1, 1.0), (0, -1.0)):
        maps = xp.input_attribution(model, inputs, target_class=target_class)
        # d logit / d x = box * WEIGHTS, so input x gradient summed over channels is:
        expected = np.maximum(sign * (inputs["pre"] * WEIGHTS).sum(-1) * _box(), 0)
        np.testing.assert_allclose(maps["pre"], expected / expected.max(), rtol=1e-4,
                                   atol=1e-6)
        assert maps["post"].max() == 0.0  # no attribution to an input the model ignores
        assert maps["pre"][_box() == 0].max() == 0.0


def test_grad_cam_refuses_a_detached_head():
    from utils.model.rpnet import build_rpnet

    with pytest.raises(ValueError, match="detached"):
        xp.branch_feature_tensors(build_rpnet((8, 16, 16, 2), "full", depth=3, base_filters=2))


def test_gradcam_patients_are_the_most_confident_correct_calls():
    scores = pd.DataFrame({"model": "full", "patient_id": ["A", "B", "C", "D", "E"],
                           "cohort": ["internal_validation"] * 4 + ["training"],
                           "pcr": [1, 1, 0, 0, 1], "score": [0.7, 0.9, 0.2, 0.1, 0.99]})
    picks = xp.pick_gradcam_patients(scores)
    assert list(picks["patient_id"]) == ["B", "D"]


def test_attribution_panels_show_the_channel_and_measure_the_share_in_the_tumour(tmp_path):
    import pandas as pd

    from utils.io import save_npz_atomic

    rng = np.random.default_rng(0)
    mask = np.zeros((8, 16, 16), np.uint8)
    mask[2:6, 4:12, 4:12] = 1
    image = rng.normal(size=(8, 16, 16, 2)).astype(np.float32)
    save_npz_atomic(tmp_path / "P1.npz", image_pre=image, image_post=image, mask_pre=mask,
                    mask_post=mask, spacing_zyx=np.ones(3), meta_json=np.array("{}"))
    patients = pd.DataFrame({"patient_id": ["P1"], "pcr": [1], "score": [0.8]})
    files = {"P1": tmp_path / "P1.npz"}
    inside = box_model(where=(slice(3, 5), slice(5, 10), slice(5, 10)))  # within the tumour
    panels, shares = xp.attribution_panels(inside, patients, files, channel=1)
    np.testing.assert_array_equal(panels[0]["images"]["pre"], image[..., 1])
    assert panels[0]["title"] == "P1 (pCR, p=0.80)"
    assert shares.loc[0, "inside_tumour_pre"] == pytest.approx(1.0)
    assert shares.loc[0, "inside_tumour_post"] == pytest.approx(1.0)
    outside = box_model(where=(slice(0, 8), slice(12, 16), slice(0, 16)))  # beside it
    _, shares = xp.attribution_panels(outside, patients, files, channel=1)
    assert shares.loc[0, "inside_tumour_pre"] == 0.0
