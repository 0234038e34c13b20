"""Tests of utils.model: weight sharing, gradients, variants, saving, losses, FLOPs, figures."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from utils.model.compile import DEFAULT_LOSS_WEIGHTS, compile_rpnet, rpnet_losses
from utils.model.diagram import draw_architecture, plot_forward_pass
from utils.model.flops import block_table, count_flops
from utils.model.layers import AbsDifference, MaskedAverage, MaskedMoments, SoftUnion
from utils.model.levels import level_shapes, level_strides, receptive_field
from utils.model.losses import DiceBCELoss, DiceMetric, WeightedBCELoss, soft_dice_loss
from utils.model.rpnet import build_rpnet, head_groups, head_vector_model, set_readout, variant_of
from utils.model.variants import BRANCHES, JOINS, MASKS, VARIANTS, VariantSpec

SHAPE = (8, 16, 16, 2)
TINY = {"depth": 3, "base_filters": 4, "seed": 3}
BATCH = 2


def _data(spec: VariantSpec, seed: int = 0) -> tuple[dict, dict]:
    rng = np.random.default_rng(seed)
    x = {b: rng.normal(size=(BATCH, *SHAPE)).astype("float32") for b in spec.inputs}
    y = {name: (rng.random((BATCH, *SHAPE[:3], 1)) > 0.7).astype("float32")
         for name in spec.outputs if name != "pcr"}
    y["pcr"] = np.array([[0.0], [1.0]], dtype="float32")
    return x, y


def _build(variant: str = "full", **kwargs) -> keras.Model:
    return build_rpnet(SHAPE, variant, **{**TINY, **kwargs})


def _backbones(model: keras.Model) -> list[keras.Model]:
    return [layer for layer in model.layers if isinstance(layer, keras.Model)]


def _call(model: keras.Model, x: dict) -> dict[str, np.ndarray]:
    return {k: keras.ops.convert_to_numpy(v) for k, v in model(x, training=False).items()}


@pytest.fixture(scope="module")
def full() -> keras.Model:
    return compile_rpnet(_build("full"), "full", jit_compile=False)


@pytest.fixture(scope="module")
def untied() -> keras.Model:
    return _build("untied")


# --------------------------------------------------------------------------- structure
def test_level_strides_are_anisotropic_for_thick_slices():
    assert level_strides((16, 40, 40), 4) == ((1, 2, 2), (2, 2, 2), (2, 2, 2))
    assert level_strides((32, 96, 96), 5) == ((1, 2, 2), *[(2, 2, 2)] * 3)
    assert level_strides(SHAPE[:3], 3) == ((2, 2, 2), (2, 2, 2))
    assert level_shapes((16, 40, 40), 4)[-1] == (4, 5, 5)


def test_output_shapes_and_ranges(full):
    x, _ = _data(VARIANTS["full"])
    pred = _call(full, x)
    assert set(pred) == {"mask_pre", "mask_post", "pcr"}
    assert pred["mask_pre"].shape == pred["mask_post"].shape == (BATCH, *SHAPE[:3], 1)
    assert pred["pcr"].shape == (BATCH, 1)
    for value in pred.values():
        assert np.all((value >= 0) & (value <= 1))


def _variable_ids(layer) -> set[int]:
    return {id(v) for v in layer.weights}


def test_full_branches_share_one_set_of_backbone_weights(full):
    (backbone,) = _backbones(full)
    backbone_ids = _variable_ids(backbone)
    model_ids = _variable_ids(full)
    assert backbone_ids <= model_ids
    head_ids = set().union(*(_variable_ids(layer) for layer in full.layers
                             if not isinstance(layer, keras.Model)))
    assert len(model_ids) == len(backbone_ids) + len(head_ids)  # backbone counted once
    x, _ = _data(VARIANTS["full"])
    pred = _call(full, {"pre": x["pre"], "post": x["pre"]})
    np.testing.assert_array_equal(pred["mask_pre"], pred["mask_post"])


def test_untied_has_two_disjoint_backbones(untied, full):
    model = untied
    first, second = _backbones(model)
    assert not _variable_ids(first) & _variable_ids(second)
    assert len(first.weights) == len(second.weights)
    n_backbone = first.count_params()
    assert model.count_params() == full.count_params() + n_backbone
    x, _ = _data(VARIANTS["untied"])
    pred = _call(model, {"pre": x["pre"], "post": x["pre"]})
    assert not np.allclose(pred["mask_pre"], pred["mask_post"])


def test_seed_makes_weights_reproducible(untied):
    a, b = untied, _build("untied")
    for wa, wb in zip(a.get_weights(), b.get_weights(), strict=True):
        np.testing.assert_array_equal(wa, wb)


# --------------------------------------------------------------------------- gradients
def _pcr_gradients(model: keras.Model, weights: list) -> list[float]:
    """Max |d pcr-loss / d w| of each weight, with a non-zero final unit (the zero-initialised
    unit would block every gradient behind it)."""
    import tensorflow as tf

    width = head_vector_model(model).output.shape[-1]
    set_readout(model, np.linspace(-1, 1, width), 0.1)
    x, y = _data(VARIANTS[variant_of(model)])
    with tf.GradientTape() as tape:
        loss = keras.losses.BinaryCrossentropy()(y["pcr"], model(x, training=True)["pcr"])
    return [0.0 if g is None else float(tf.reduce_max(tf.abs(g)))
            for g in tape.gradient(loss, weights)]


def _backbone_weights(model: keras.Model) -> list:
    return [w for b in _backbones(model) for w in b.trainable_weights]


def test_gradients_reach_both_inputs_and_every_head(full):
    if keras.backend.backend() != "tensorflow":
        pytest.skip("GradientTape test runs under the TensorFlow backend")
    import tensorflow as tf

    x, y = _data(VARIANTS["full"])
    x = {k: tf.constant(v) for k, v in x.items()}
    losses, weights = rpnet_losses("full"), DEFAULT_LOSS_WEIGHTS
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(list(x.values()))
        pred = full(x, training=True)
        total = sum(weights[k] * losses[k](y[k], pred[k]) for k in losses)
    for name, tensor in x.items():
        assert float(tf.reduce_max(tf.abs(tape.gradient(total, tensor)))) > 0, name
    heads = [w for w in full.trainable_weights if w.path.endswith("kernel") and (
        w.path.split("/")[0] == "pcr" or w.path.split("/")[-2].startswith("seg"))]
    assert len(heads) == 3  # 2 seg convs and the pcr unit; the zero-initialised unit passes
    # no gradient to the head's batch norm before it at the first step
    for weight, grad in zip(heads, tape.gradient(total, heads), strict=True):
        assert grad is not None and float(tf.reduce_max(tf.abs(grad))) > 0, weight.path


def test_pcr_loss_stops_at_the_head_unless_asked():
    """The design choice: by default the pCR loss trains the readout only."""
    if keras.backend.backend() != "tensorflow":
        pytest.skip("GradientTape test runs under the TensorFlow backend")
    detached = _build("full")
    assert max(_pcr_gradients(detached, _backbone_weights(detached))) == 0.0
    assert max(_pcr_gradients(detached, detached.get_layer("pcr").trainable_weights)) > 0
    for model in (_build("full", pcr_gradient=True), _build("single_task")):
        grads = _pcr_gradients(model, _backbone_weights(model))
        assert sum(g > 0 for g in grads) > len(grads) // 2, model.name


def test_tumour_head_reads_the_predicted_tumour():
    """Head vector blocks: pooled joins, log volumes and masked moments of the inputs, the
    latter equal to NumPy on the binary predicted masks; set_readout gives the output."""
    model = _build("full")
    x, _ = _data(VARIANTS["full"])
    groups = head_groups(model)
    assert [g for g, _ in groups][:3] == list(JOINS) and groups[-1][0] == "tumour"
    vector = keras.ops.convert_to_numpy(head_vector_model(model)(x, training=False))
    assert vector.shape == (BATCH, sum(w for _, w in groups))
    probe = keras.Model(model.inputs, {
        "masks": {b: model.get_layer(MASKS[b]).output for b in BRANCHES},
        "volumes": model.get_layer("tumour_log_volumes").output,
        "moments": model.get_layer("tumour_moments_post_in_pre").output})
    out = keras.tree.map_structure(keras.ops.convert_to_numpy, probe(x, training=False))
    binary = {b: out["masks"][b][..., 0] >= 0.5 for b in BRANCHES}
    counts = [binary[b].reshape(BATCH, -1).sum(1) for b in BRANCHES]
    np.testing.assert_allclose(out["volumes"], np.stack(
        [np.log1p(counts[0]), np.log1p(counts[1]), np.log1p(counts[1]) - np.log1p(counts[0])],
        -1), rtol=1e-5, atol=1e-5)
    for i in range(BATCH):
        inside = x["post"][i][binary["pre"][i]]
        mean = inside.sum(0) / (len(inside) + 1.0)  # MaskedAverage: epsilon 1 voxel
        np.testing.assert_allclose(out["moments"][i, :2], mean, rtol=1e-4, atol=1e-5)
    coef = np.linspace(-0.5, 0.5, vector.shape[1])
    set_readout(model, coef, -0.3)
    expected = 1 / (1 + np.exp(-(vector @ coef - 0.3)))
    np.testing.assert_allclose(_call(model, x)["pcr"][:, 0], expected, rtol=1e-4)


def test_masked_layers_on_known_values():
    x = np.zeros((1, 2, 2, 2, 1), np.float32)
    x[0, 0, 0, :, 0] = [2.0, 4.0]
    w = np.zeros((1, 2, 2, 2, 1), np.float32)
    w[0, 0, 0, :, 0] = 1.0
    moments = keras.ops.convert_to_numpy(MaskedMoments(epsilon=0.0)([x, w]))
    np.testing.assert_allclose(moments, [[3.0, 1.0]], rtol=1e-6)
    empty = keras.ops.convert_to_numpy(MaskedAverage()([x, np.zeros_like(w)]))
    assert empty[0, 0] == 0.0
    union = keras.ops.convert_to_numpy(SoftUnion()([np.full((1, 1), 0.5), np.full((1, 1),
                                                                                        0.5)]))
    assert union[0, 0] == pytest.approx(0.75)


# --------------------------------------------------------------------------- train / save
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_variant_trains_saves_and_loads(variant, tmp_path):
    spec = VARIANTS[variant]
    # eager SGD: no graph tracing, few optimizer ops, so the step takes ~2 s on 2 cores
    model = compile_rpnet(_build(variant), variant, optimizer="sgd", run_eagerly=True)
    assert sorted(model.output_names) == sorted(spec.outputs)
    assert sorted(t.name for t in model.inputs) == sorted(spec.inputs)
    assert len(_backbones(model)) == (1 if spec.tied else len(spec.inputs))
    x, y = _data(spec)
    before = [w.copy() for w in model.get_weights()]
    history = model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert ("mask_pre_loss" in history.history) == ("mask_pre" in spec.outputs)
    assert any(not np.allclose(a, b) for a, b in zip(before, model.get_weights(), strict=True))
    _assert_round_trip(model, x, tmp_path / f"{variant}.keras")


def _assert_round_trip(model: keras.Model, x: dict, path) -> None:
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    before, after = _call(model, x), _call(loaded, x)
    assert set(after) == set(before)
    for name in before:
        np.testing.assert_allclose(after[name], before[name], rtol=0, atol=1e-6)


@pytest.mark.parametrize("comparison", ["abs_diff", "concat"])
def test_comparison_modes_build_and_round_trip(comparison, tmp_path):
    model = _build("full", comparison=comparison)
    layer_type = AbsDifference if comparison == "abs_diff" else keras.layers.Concatenate
    assert isinstance(model.get_layer("join_bottleneck_" + comparison.replace("_", "")),
                      layer_type)
    x, _ = _data(VARIANTS["full"])
    _assert_round_trip(model, x, tmp_path / f"{comparison}.keras")


def test_compile_options(full):
    model = compile_rpnet(_build("full"), "full", pcr_pos_weight=3.0, optimizer="sgd",
                            learning_rate=1e-2, loss_weights={"pcr": 2.0}, jit_compile=False)
    assert isinstance(model.optimizer, keras.optimizers.SGD)
    assert model.optimizer.momentum == 0.9
    with pytest.raises(ValueError, match="outputs"):
        compile_rpnet(_build("pre_only"), "full")
    with pytest.raises(ValueError, match="variant"):
        build_rpnet(SHAPE, "nope")


_SECOND_BACKEND = textwrap.dedent("""
    import numpy as np, keras
    from utils.model.compile import compile_rpnet
    from utils.model.rpnet import build_rpnet
    from utils.model.variants import VARIANTS
    assert keras.backend.backend() == "{backend}"
    spec = VARIANTS["full"]
    # jit_compile="auto" compiles the whole step once (op-by-op JAX is slower still)
    model = compile_rpnet(build_rpnet({shape}, "full", depth=3, base_filters=4, seed=1),
                            "full", optimizer="sgd")
    rng = np.random.default_rng(0)
    x = {{b: rng.normal(size=(2, *{shape})).astype("float32") for b in spec.inputs}}
    y = {{k: (rng.random((2, *{shape}[:3], 1)) > 0.7).astype("float32")
         for k in ("mask_pre", "mask_post")}}
    y["pcr"] = np.array([[0.0], [1.0]], dtype="float32")
    before = [w.copy() for w in model.get_weights()]
    logs = model.train_on_batch(x, y, return_dict=True)
    assert np.isfinite(logs["loss"]), logs
    assert any(not np.allclose(a, b) for a, b in zip(before, model.get_weights()))
    pred = model.predict_on_batch(x)
    assert np.all((pred["pcr"] >= 0) & (pred["pcr"] <= 1))
    assert pred["mask_pre"].shape == (2, *{shape}[:3], 1) and pred["pcr"].shape == (2, 1)
    print("ok", keras.backend.backend(), logs["loss"])
""")


def test_forward_backward_under_a_second_backend():
    backend = next((b for b in ("jax", "torch") if importlib.util.find_spec(b)), None)
    if backend is None:
        pytest.skip("neither jax nor torch is importable: second-backend check not run")
    env = {**os.environ, "KERAS_BACKEND": backend}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = _SECOND_BACKEND.format(backend=backend, shape=SHAPE)
    done = subprocess.run([sys.executable, "-c", script], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"ok {backend}" in done.stdout


# --------------------------------------------------------------------------- losses
def test_dice_loss_on_known_inputs():
    mask = np.zeros((2, 4, 8, 8, 1), dtype="float32")
    mask[:, 1:3, 2:6, 2:6] = 1.0
    other = np.zeros_like(mask)
    other[:, 0, 0:2, 0:2] = 1.0
    perfect = keras.ops.convert_to_numpy(soft_dice_loss(mask, mask))
    disjoint = keras.ops.convert_to_numpy(soft_dice_loss(mask, other))
    assert perfect.shape == (2,)
    np.testing.assert_allclose(perfect, 0.0, atol=1e-6)
    np.testing.assert_allclose(disjoint, 1 - 1 / (32 + 4 + 1), rtol=1e-6)  # ~1
    dice_only = DiceBCELoss(bce_weight=0.0)
    assert float(dice_only(mask, other)) == pytest.approx(float(disjoint.mean()), rel=1e-5)
    metric = DiceMetric()
    metric.update_state(mask, mask)
    assert float(metric.result()) == pytest.approx(1.0)
    metric.update_state(mask, other)
    assert float(metric.result()) == pytest.approx(0.5)


def test_weighted_bce_matches_keras_bce_at_weight_one():
    y_true = np.array([[1.0], [0.0], [1.0]], dtype="float32")
    y_pred = np.array([[0.8], [0.3], [0.4]], dtype="float32")
    plain = float(keras.losses.BinaryCrossentropy()(y_true, y_pred))
    assert float(WeightedBCELoss(1.0)(y_true, y_pred)) == pytest.approx(plain, rel=1e-4)
    expected = -(3 * np.log(0.8) + np.log(0.7) + 3 * np.log(0.4)) / 3
    assert float(WeightedBCELoss(3.0)(y_true, y_pred)) == pytest.approx(expected, rel=1e-4)
    config = WeightedBCELoss(3.0).get_config()
    assert WeightedBCELoss.from_config(config).pos_weight == 3.0


# --------------------------------------------------------------------------- helpers
def test_flops_of_one_conv_match_hand_count():
    inp = keras.Input((4, 8, 8, 2))
    out = keras.layers.Conv3D(3, 3, padding="same")(inp)
    out = keras.layers.Dense(5)(keras.layers.GlobalAveragePooling3D()(out))
    tiny = keras.Model(inp, out)
    assert count_flops(tiny) == 2 * 27 * 2 * 3 * (4 * 8 * 8) + 2 * 3 * 5
    strided = keras.Model(inp, keras.layers.Conv3D(6, 3, strides=(1, 2, 2), padding="same")(inp))
    assert count_flops(strided) == 2 * 27 * 2 * 6 * (4 * 4 * 4)


def test_flops_count_both_branches(full, untied):
    flops = count_flops(full)
    assert flops == count_flops(TINY, SHAPE)  # config form gives the same
    assert flops == count_flops(untied)  # tied or not: same arithmetic
    (backbone,) = _backbones(full)
    assert 2 * count_flops(backbone) < flops < 2.2 * count_flops(backbone)


def test_receptive_field_hand_computed():
    # depth 2: 3 convs at level 0 (7), a stride-2 conv (+2 -> 9), 2 convs at jump 2 (+8)
    assert receptive_field(2) == (17, 17, 17)
    assert receptive_field(2, [(1, 2, 2)]) == (13, 17, 17)
    assert receptive_field(3, where="mask")[0] > receptive_field(3)[0]


def test_block_table_accounts_for_every_parameter(full):
    table = block_table(full)
    assert list(table.columns) == ["component", "block", "output_shape", "params"]
    assert table["params"].sum() == full.count_params()
    assert {"join_encoder", "join_bottleneck", "join_deep_supervision", "pcr"} <= set(
        table["block"])
    assert table["component"].str.contains("pre, post").any()


def test_draw_architecture_returns_a_figure():
    import matplotlib.pyplot as plt

    for variant in ("full", "pre_only", "untied", "bottleneck_join"):
        fig = draw_architecture(None, depth=4, base_filters=8, variant=variant)
        assert len(fig.axes[0].patches) > 10
        plt.close(fig)


# --------------------------------------------------------------------------- figures
def test_forward_pass_figure_shows_inputs_and_both_masks():
    import matplotlib.pyplot as plt

    mask = np.zeros((6, 8, 8), np.uint8)
    mask[3, 2:5, 2:5] = 1
    sample = {"image_pre": np.ones((6, 8, 8, 2)), "image_post": np.zeros((6, 8, 8, 2)),
              "mask_pre": mask, "mask_post": mask}
    outputs = {"mask_pre": np.full((1, 6, 8, 8, 1), 0.2),
               "mask_post": np.full((1, 6, 8, 8, 1), 0.7)}
    fig = plot_forward_pass(sample, outputs)
    assert [ax.get_title() for ax in fig.axes] == ["pre T2W", "post T2W", "mask_pre output",
                                                   "mask_post output"]
    assert float(fig.axes[3].images[0].get_array().mean()) == pytest.approx(0.7)
    plt.close(fig)
