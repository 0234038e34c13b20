"""3D RP-Net (Jin et al., Nat Commun 2021): a Siamese multi-task 3D U-Net for pCR prediction.

One backbone (the Isensee et al. 2017 BraTS 3D U-Net) is applied to the pre- and the
post-treatment exam. The two branches are compared at three scales (an encoder level at 1/4
in-plane resolution, the bottleneck and the summed deep-supervision map at 1/2 resolution);
each comparison goes through a conv block and global average pooling, and a sigmoid unit on
the concatenated vectors gives the probability of pathological complete response (``pcr``).
Each branch also segments its tumour (``mask_pre``, ``mask_post``).

Differences from the authors' Keras-2 release, all deliberate:

- the two branches share one backbone (the release built two, so its weights were untied;
  that model remains available as the ``untied`` variant);
- segmentation maps are linear 1x1x1 convolutions (as in Isensee et al.), not conv+norm+act;
- LeakyReLU slope 0.01 (Isensee et al.) and no conv bias in front of a normalisation;
- downsampling strides are anisotropic, computed from the input shape (:func:`level_strides`).

Everything here is plain Keras 3; custom layers, losses and metrics use ``keras.ops`` only,
so the model runs under the TensorFlow, JAX and PyTorch backends, and ``.keras`` files load
with ``keras.saving.load_model(path, safe_mode=True)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np
from keras import layers

from utils.model.layers import (
    AbsDifference,
    LogVolumes,
    MaskedAverage,
    MaskedMoments,
    SoftUnion,
    StopGradient,
)
from utils.model.levels import (
    Strides,
    encoder_join_level,
    join_levels,
    level_pool_sizes,
    level_strides,
)
from utils.model.variants import BRANCHES, COMPARISONS, JOINS, MASKS, VARIANTS

HEAD_VECTOR = "head_norm"  # the layer whose output the final pcr Dense reads
LEAKY_SLOPE = 0.01
N_SEGMENTATION_LEVELS = 3


# --------------------------------------------------------------------------- building blocks
class _Seeds:
    """Deterministic per-layer seeds derived from one seed (or ``None`` for random)."""

    def __init__(self, seed: int | None) -> None:
        self.seed, self.count = seed, 0

    def next(self) -> int | None:
        if self.seed is None:
            return None
        self.count += 1
        return (self.seed + 7919 * self.count) % (2**31 - 1)

    def init(self) -> keras.initializers.Initializer:
        return keras.initializers.GlorotUniform(seed=self.next())


def _conv_block(x, filters: int, name: str, seeds: _Seeds, kernel: int = 3,
                strides: Sequence[int] | int = 1):
    """Conv3D (no bias) -> instance norm -> LeakyReLU."""
    x = layers.Conv3D(filters, kernel, strides=strides, padding="same", use_bias=False,
                      kernel_initializer=seeds.init(), name=f"{name}_conv")(x)
    x = layers.GroupNormalization(groups=-1, name=f"{name}_norm")(x)
    return layers.LeakyReLU(negative_slope=LEAKY_SLOPE, name=f"{name}_act")(x)


def _context_module(x, filters: int, name: str, dropout: float, seeds: _Seeds):
    """Residual context module: conv, spatial dropout, conv, added to its input."""
    y = _conv_block(x, filters, f"{name}_ctx1", seeds)
    y = layers.SpatialDropout3D(dropout, seed=seeds.next(), name=f"{name}_drop")(y)
    y = _conv_block(y, filters, f"{name}_ctx2", seeds)
    return layers.Add(name=f"{name}_sum")([x, y])


def _encoder(x, filters: Sequence[int], strides: Strides, dropout: float, seeds: _Seeds) -> list:
    skips = []
    for level, n in enumerate(filters):
        stride = 1 if level == 0 else strides[level - 1]
        x = _conv_block(x, n, f"enc{level}_in", seeds, strides=stride)
        x = _context_module(x, n, f"enc{level}", dropout, seeds)
        skips.append(x)
    return skips


def _decoder(skips: list, filters: Sequence[int], strides: Strides, seeds: _Seeds,
             last_level: int) -> dict[int, object]:
    """Up-sampling and localisation modules; returns the 1x1x1 segmentation map per level."""
    x, segs = skips[-1], {}
    for level in range(len(skips) - 2, last_level - 1, -1):
        x = layers.UpSampling3D(strides[level], name=f"dec{level}_up")(x)
        x = _conv_block(x, filters[level], f"dec{level}_upconv", seeds)
        x = layers.Concatenate(name=f"dec{level}_concat")([skips[level], x])
        x = _conv_block(x, filters[level], f"dec{level}_loc1", seeds)
        x = _conv_block(x, filters[level], f"dec{level}_loc2", seeds, kernel=1)
        if level < N_SEGMENTATION_LEVELS:
            segs[level] = layers.Conv3D(1, 1, kernel_initializer=seeds.init(),
                                        name=f"seg{level}")(x)
    return segs


def _deep_supervision(segs: dict[int, object], strides: Strides) -> dict[int, object]:
    """Sum segmentation maps from coarse to fine; returns the running sum per level."""
    sums, total = {}, None
    for level in sorted(segs, reverse=True):
        if total is not None:
            total = layers.UpSampling3D(strides[level], name=f"ds{level}_up")(total)
            total = layers.Add(name=f"ds{level}_sum")([total, segs[level]])
        else:
            total = segs[level]
        sums[level] = total
    return sums


def build_backbone(input_shape_zyxc: Sequence[int], depth: int = 4, base_filters: int = 8,
                   dropout: float = 0.3, segmentation: bool = True, seed: int | None = None,
                   name: str = "backbone", _seeds: _Seeds | None = None) -> keras.Model:
    """The Isensee 3D U-Net as a model with a dict of join features (and mask logits).

    Outputs: ``encoder`` (level :func:`encoder_join_level`), ``bottleneck``,
    ``deep_supervision`` (summed segmentation logits at level 1) and, with segmentation,
    ``mask_logits`` (full resolution, pre-sigmoid).
    """
    if depth < 3:
        raise ValueError("depth must be >= 3 (joins at 1/4 resolution and the bottleneck)")
    seeds = _seeds or _Seeds(seed)
    filters = [base_filters * 2**level for level in range(depth)]
    strides = level_strides(input_shape_zyxc[:3], depth)
    image = keras.Input(tuple(input_shape_zyxc), name="image")
    skips = _encoder(image, filters, strides, dropout, seeds)
    sums = _deep_supervision(_decoder(skips, filters, strides, seeds, 0 if segmentation else 1),
                             strides)
    outputs = {"encoder": skips[encoder_join_level(depth)], "bottleneck": skips[-1],
               "deep_supervision": sums[1]}
    if segmentation:
        outputs["mask_logits"] = sums[0]
    return keras.Model(image, outputs, name=name)


def _check_args(input_shape_zyxc: Sequence[int], variant: str, comparison: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose one of {sorted(VARIANTS)}")
    if comparison not in COMPARISONS:
        raise ValueError(f"unknown comparison {comparison!r}; choose one of {COMPARISONS}")
    if len(input_shape_zyxc) != 4:
        raise ValueError(f"input_shape_zyxc must be (z, y, x, C), got {input_shape_zyxc}")


def build_rpnet(input_shape_zyxc: Sequence[int], variant: str = "full", depth: int = 4,
                base_filters: int = 8, dropout: float = 0.3, comparison: str = "subtract",
                seed: int | None = None, pcr_gradient: bool = False,
                sync_batchnorm: bool = False) -> keras.Model:
    """Build one RP-Net variant (see :data:`VARIANTS`).

    Inputs are a dict ``{"pre", "post"}`` (the variant's subset) of (z, y, x, C) volumes;
    outputs a dict with the variant's ``mask_pre``/``mask_post`` ((z, y, x, 1) sigmoid) and
    ``pcr`` ((1,) sigmoid). ``comparison`` is how a join compares post with pre:
    ``post - pre`` (default), channel concatenation, or ``|post - pre|``.

    The default (``tumour``) head reads pCR inside the predicted tumour
    (:func:`_tumour_head`). ``pcr_gradient=False`` (default) stops the pCR loss at the head:
    the backbone, its features and its masks learn from the segmentation losses only, and the
    pCR loss trains the readout alone, so the head vector of a training patient is not
    fitted to that patient's label (which keeps the readout's cross-validation honest,
    :mod:`utils.training.readout`). The ``single_task`` variant has no segmentation loss, so its
    backbone always learns from the pCR loss. ``sync_batchnorm``: the head's batch norm
    averages its statistics over all replicas (set under a distribution strategy, so that
    every worker ends with the same moving statistics).
    """
    _check_args(input_shape_zyxc, variant, comparison)
    spec, seeds = VARIANTS[variant], _Seeds(seed)
    inputs = {b: keras.Input(tuple(input_shape_zyxc), name=b) for b in spec.inputs}
    kwargs = {"depth": depth, "base_filters": base_filters, "dropout": dropout,
                  "segmentation": spec.segmentation or spec.head == "tumour", "_seeds": seeds}
    if spec.tied:
        shared = build_backbone(input_shape_zyxc, name="backbone", **kwargs)
        backbones = dict.fromkeys(spec.inputs, shared)
    else:
        backbones = {b: build_backbone(input_shape_zyxc, name=f"backbone_{b}", **kwargs)
                     for b in spec.inputs}
    features = {b: backbones[b](inputs[b]) for b in spec.inputs}
    masks = {b: layers.Activation("sigmoid", dtype="float32", name=MASKS[b])(
        features[b]["mask_logits"]) for b in spec.inputs if "mask_logits" in features[b]}
    outputs = {MASKS[b]: masks[b] for b in spec.inputs if spec.segmentation}
    if spec.head == "paper":
        outputs["pcr"] = _paper_head(features, spec.joins, depth, base_filters, dropout,
                                     comparison, seeds)
    else:
        detach = spec.segmentation and not pcr_gradient
        outputs["pcr"] = _tumour_head(inputs, features, masks, spec.joins, input_shape_zyxc,
                                      depth, dropout, comparison, seeds, detach, sync_batchnorm)
    return keras.Model(inputs, outputs, name=f"rpnet_{variant}")


def _compare(features: dict[str, object], key: str, comparison: str):
    """Post compared with pre at one join (or the one branch's features)."""
    maps = [features[b][key] for b in BRANCHES if b in features]
    if len(maps) == 1:
        return maps[0]
    if comparison == "subtract":
        return layers.Subtract(name=f"join_{key}_diff")(maps[::-1])
    if comparison == "concat":
        return layers.Concatenate(name=f"join_{key}_concat")(maps)
    return AbsDifference(name=f"join_{key}_absdiff")(maps[::-1])


def _final_dense(x, dropout: float, seeds: _Seeds, zero_init: bool):
    x = layers.Dropout(dropout, seed=seeds.next(), name="head_dropout")(x)
    init = "zeros" if zero_init else seeds.init()
    return layers.Dense(1, activation="sigmoid", dtype="float32", name="pcr",
                        kernel_initializer=init)(x)


def _paper_head(features: dict, joins: Sequence[str], depth: int, base_filters: int,
                dropout: float, comparison: str, seeds: _Seeds):
    """The release's head: per join, compare, conv block (instance norm), global average pool
    over the whole ROI; concatenate, dropout, sigmoid unit."""
    level = join_levels(depth)
    vectors = []
    for key in joins:
        x = _conv_block(_compare(features, key, comparison), base_filters * 2 ** level[key],
                        f"join_{key}", seeds)
        vectors.append(layers.GlobalAveragePooling3D(name=f"join_{key}_gap")(x))
    x = layers.Concatenate(name="head_concat")(vectors) if len(vectors) > 1 else vectors[0]
    return _final_dense(x, dropout, seeds, zero_init=False)


def _detached(features: dict, masks: dict) -> tuple[dict, dict]:
    """The join features and the binary masks (>= 0.5, as every predicted mask of this
    package) behind a StopGradient: the pCR loss stops at the head."""
    features = {b: {key: StopGradient(name=f"{b}_{key}_detached")(value)
                    for key, value in maps.items() if key in JOINS}
                for b, maps in features.items()}
    masks = {b: StopGradient(0.5, name=f"{MASKS[b]}_binary")(m) for b, m in masks.items()}
    return features, masks


def _tumour_head(inputs: dict, features: dict, masks: dict, joins: Sequence[str],
                 input_shape_zyxc: Sequence[int], depth: int, dropout: float,
                 comparison: str, seeds: _Seeds, detach: bool, sync_batchnorm: bool = False):
    """Tumour-guided readout: the post-vs-pre comparison averaged inside the predicted tumour.

    Per join: the comparison map (no convolution, no normalisation: amplitude survives)
    averaged inside the tumour region (union of the pre and post masks, average-pooled to the
    join's grid; binary masks when the head is detached, soft ones for ``single_task``).
    Tumour-level quantities: log volumes and their log ratio, and the mean and SD of every
    input channel of each exam inside each mask. Batch norm on the head vector, dropout, and
    a zero-initialised sigmoid unit (training starts at p = 0.5)."""
    branches = [b for b in BRANCHES if b in masks]
    if detach:
        features, masks = _detached(features, masks)
    region = (SoftUnion(name="tumour_region")([masks[b] for b in branches])
              if len(branches) > 1 else masks[branches[0]])
    pools = level_pool_sizes(input_shape_zyxc[:3], depth)
    level = join_levels(depth)
    vectors = []
    for key in joins:
        weight = region if level[key] == 0 else layers.AveragePooling3D(
            pools[level[key]], name=f"join_{key}_region")(region)
        vectors.append(MaskedAverage(name=f"join_{key}_tumour_mean")(
            [_compare(features, key, comparison), weight]))
    vectors.append(LogVolumes(name="tumour_log_volumes")([masks[b] for b in branches]))
    vectors += [MaskedMoments(name=f"tumour_moments_{image}_in_{where}")(
        [inputs[image], masks[where]]) for image in BRANCHES if image in inputs
        for where in branches]
    x = layers.Concatenate(name="head_concat")(vectors)
    x = layers.BatchNormalization(momentum=0.9, synchronized=sync_batchnorm, name=HEAD_VECTOR)(x)
    return _final_dense(x, dropout, seeds, zero_init=True)


def head_groups(model: keras.Model) -> list[tuple[str, int]]:
    """``(group, width)`` of each block of the head vector, in order. Groups: the join name
    (``encoder``, ``bottleneck``, ``deep_supervision``) for pooled join features, ``tumour``
    for the tumour-level quantities."""
    names = {layer.name for layer in model.layers}
    if "head_concat" not in names:
        return [("all", int(model.get_layer("pcr").input.shape[-1]))]
    groups = []
    for tensor in model.get_layer("head_concat").input:
        name = tensor._keras_history.operation.name  # the layer that produced the block
        key = next((k for k in JOINS if name.startswith(f"join_{k}_")), "tumour")
        groups.append((key, int(tensor.shape[-1])))
    return groups


def head_feature_names(model: keras.Model, sequences: Sequence[str]) -> list[str]:
    """A readable name for every column of the head vector, in order: ``log V pre``,
    ``log V post/pre``, ``mean DWI post in post``, ``join_encoder_tumour_mean[3]``, ..."""
    if "head_concat" not in {layer.name for layer in model.layers}:
        return [f"head[{i}]" for i in range(int(model.get_layer("pcr").input.shape[-1]))]
    names: list[str] = []
    for tensor in model.get_layer("head_concat").input:
        layer, width = tensor._keras_history.operation.name, int(tensor.shape[-1])
        names += _block_names(layer, width, list(sequences))
    return names


def _block_names(layer: str, width: int, sequences: list[str]) -> list[str]:
    if layer == "tumour_log_volumes":
        return ["log V pre", "log V post", "log V post/pre"][:width] if width != 1 else [
            "log V"]
    if layer.startswith("tumour_moments_") and width == 2 * len(sequences):
        image, where = layer.removeprefix("tumour_moments_").split("_in_")
        return [f"{stat} {seq} {image} in {where}" for stat in ("mean", "sd")
                for seq in sequences]
    return [f"{layer}[{i}]" for i in range(width)]


def head_vector_model(model: keras.Model) -> keras.Model:
    """A model from the RP-Net inputs to the head vector that the final ``pcr`` unit reads."""
    return keras.Model(model.inputs, model.get_layer("pcr").input)


def set_readout(model: keras.Model, coef: Sequence[float], intercept: float) -> None:
    """Replace the final ``pcr`` unit's weights (a logistic readout on the head vector)."""
    dense = model.get_layer("pcr")
    kernel = np.asarray(coef, dtype="float32").reshape(dense.kernel.shape)
    dense.set_weights([kernel, np.asarray([intercept], dtype="float32")])


def variant_of(model: keras.Model) -> str:
    """The variant name of a model built by :func:`build_rpnet`."""
    return model.name.removeprefix("rpnet_")
