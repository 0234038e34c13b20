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


def test_grad_cam_on_rpnet_has_input_shape_and_is_non_negative(tiny_rpnet):
    rng = np.random.default_rng(0)
    inputs = {b: rng.normal(size=(8, 16, 16, 2)).astype(np.float32) for b in ("pre", "post")}
    features = xp.branch_feature_tensors(tiny_rpnet, "encoder")
    assert set(features) == {"pre", "post"}
    maps = xp.grad_cam_3d(tiny_rpnet, inputs, features)
    for cam in maps.values():
        assert cam.shape == (8, 16, 16) and np.isfinite(cam).all() and cam.min() >= 0
    assert max(cam.max() for cam in maps.values()) == pytest.approx(1.0)
    bottleneck = xp.grad_cam_3d(tiny_rpnet, inputs, key="bottleneck", target_class=0)
    assert bottleneck["pre"].shape == (8, 16, 16)


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


def test_input_attribution_has_input_shape_and_is_non_negative(tiny_rpnet):
    rng = np.random.default_rng(1)
    inputs = {b: rng.normal(size=(8, 16, 16, 2)).astype(np.float32) for b in ("pre", "post")}
    maps = xp.input_attribution(tiny_rpnet, inputs)
    assert all(m.shape == (8, 16, 16) and m.min() >= 0 for m in maps.values())
    assert max(m.max() for m in maps.values()) == pytest.approx(1.0)


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


def test_attribution_panels_show_the_channel_and_measure_the_share_in_the_tumour(tiny_rpnet,
                                                                                tmp_path):
    import pandas as pd

    from utils.io import save_npz_atomic

    rng = np.random.default_rng(0)
    mask = np.zeros((8, 16, 16), np.uint8)
    mask[2:6, 4:12, 4:12] = 1
    image = rng.normal(size=(8, 16, 16, 2)).astype(np.float32)
    save_npz_atomic(tmp_path / "P1.npz", image_pre=image, image_post=image, mask_pre=mask,
                    mask_post=mask, spacing_zyx=np.ones(3), meta_json=np.array("{}"))
    patients = pd.DataFrame({"patient_id": ["P1"], "pcr": [1], "score": [0.8]})
    panels, shares = xp.attribution_panels(tiny_rpnet, patients, {"P1": tmp_path / "P1.npz"},
                                           channel=1)
    np.testing.assert_array_equal(panels[0]["images"]["pre"], image[..., 1])
    assert panels[0]["title"] == "P1 (pCR, p=0.80)"
    assert 0.0 <= shares.loc[0, "inside_tumour_pre"] <= 1.0
