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

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import pandas as pd
from keras import layers, ops

PACKAGE = "rpnet"
BRANCHES: tuple[str, ...] = ("pre", "post")
MASKS: dict[str, str] = {"pre": "mask_pre", "post": "mask_post"}
JOINS: tuple[str, ...] = ("encoder", "bottleneck", "deep_supervision")
HEADS: tuple[str, ...] = ("tumour", "paper")
HEAD_VECTOR = "head_norm"  # the layer whose output the final pcr Dense reads
COMPARISONS: tuple[str, ...] = ("subtract", "concat", "abs_diff")
OPTIMIZERS: tuple[str, ...] = ("adam", "sgd")
# The released code's loss weights: pCR 1.0, each segmentation 0.2.
DEFAULT_LOSS_WEIGHTS: dict[str, float] = {"pcr": 1.0, "mask_pre": 0.2, "mask_post": 0.2}
LEAKY_SLOPE = 0.01
N_SEGMENTATION_LEVELS = 3
Shape = tuple[int, ...]
Strides = tuple[tuple[int, int, int], ...]


# --------------------------------------------------------------------------- variants
@dataclass(frozen=True)
class VariantSpec:
    """What one model variant takes, returns and shares."""

    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    tied: bool
    joins: tuple[str, ...]
    segmentation: bool
    description: str
    head: str = "tumour"


def _spec(name: str, description: str, inputs: tuple[str, ...] = BRANCHES, tied: bool = True,
          joins: tuple[str, ...] = JOINS, segmentation: bool = True,
          head: str = "tumour") -> VariantSpec:
    masks = tuple(MASKS[b] for b in inputs) if segmentation else ()
    return VariantSpec(name, inputs, (*masks, "pcr"), tied, joins, segmentation, description,
                       head)


VARIANTS: dict[str, VariantSpec] = {v.name: v for v in (
    _spec("full", "Siamese RP-Net: shared backbone, pre/post masks, tumour-guided pCR readout"),
    _spec("paper_head", "the release's pCR head: conv + instance norm + global average pool "
          "over the whole ROI", head="paper"),
    _spec("single_task", "pCR only: same network, no segmentation losses (its tumour maps "
          "are attention learned from pCR alone)", segmentation=False),
    _spec("pre_only", "pre-treatment exam only: joins use pre features alone", inputs=("pre",)),
    _spec("post_only", "post-treatment exam only: joins use post features alone",
          inputs=("post",)),
    _spec("untied", "two backbones with separate weights (as in the authors' release)",
          tied=False),
    _spec("bottleneck_join", "pCR from the bottleneck join only", joins=("bottleneck",)),
)}


# --------------------------------------------------------------------------- custom objects
@keras.saving.register_keras_serializable(package=PACKAGE)
class AbsDifference(layers.Layer):
    """``|a - b|`` of two tensors of one shape."""

    def call(self, inputs: Sequence) -> object:
        a, b = inputs
        return ops.abs(ops.subtract(a, b))

    def compute_output_shape(self, input_shape: Sequence[Shape]) -> Shape:
        return input_shape[0]


@keras.saving.register_keras_serializable(package=PACKAGE)
class MaskedAverage(layers.Layer):
    """Per-channel mean of ``x`` (B, z, y, x, C) weighted by ``w`` (B, z, y, x, 1).

    ``sum(w * x) / (sum(w) + epsilon)``: the mean inside a soft tumour mask; an empty mask
    gives 0. Computed in float32 whatever the dtype policy (sums over many voxels).
    """

    def __init__(self, epsilon: float = 1.0, **kwargs) -> None:
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.epsilon = float(epsilon)

    def call(self, inputs: Sequence) -> object:
        x, w = (ops.cast(t, "float32") for t in inputs)
        axes = (1, 2, 3)
        return ops.sum(x * w, axis=axes) / (ops.sum(w, axis=axes) + self.epsilon)

    def compute_output_shape(self, input_shape: Sequence[Shape]) -> Shape:
        return (input_shape[0][0], input_shape[0][-1])

    def get_config(self) -> dict:
        return {**super().get_config(), "epsilon": self.epsilon}


@keras.saving.register_keras_serializable(package=PACKAGE)
class MaskedMoments(MaskedAverage):
    """Per-channel mean and standard deviation of ``x`` inside the soft mask ``w``:
    ``(B, 2C)`` = [means, SDs] (an empty mask gives zeros). Float32."""

    def call(self, inputs: Sequence) -> object:
        x, w = (ops.cast(t, "float32") for t in inputs)
        mean = super().call([x, w])
        second = super().call([x * x, w])
        return ops.concatenate([mean, ops.sqrt(ops.relu(second - mean * mean) + 1e-12)], -1)

    def compute_output_shape(self, input_shape: Sequence[Shape]) -> Shape:
        return (input_shape[0][0], 2 * input_shape[0][-1])


@keras.saving.register_keras_serializable(package=PACKAGE)
class SoftUnion(layers.Layer):
    """Probabilistic union ``1 - prod(1 - m)`` of soft masks of one shape."""

    def call(self, inputs: Sequence) -> object:
        outside = ops.ones_like(inputs[0])
        for mask in inputs:
            outside = outside * (1.0 - mask)
        return 1.0 - outside

    def compute_output_shape(self, input_shape: Sequence[Shape]) -> Shape:
        return input_shape[0]


@keras.saving.register_keras_serializable(package=PACKAGE)
class StopGradient(layers.Layer):
    """Identity in the forward pass (or ``x >= threshold`` as 0/1 when a threshold is given);
    no gradient flows back through it."""

    def __init__(self, threshold: float | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.threshold = threshold

    def call(self, inputs):
        if self.threshold is not None:
            inputs = ops.cast(inputs >= self.threshold, inputs.dtype)
        return ops.stop_gradient(inputs)

    def get_config(self) -> dict:
        return {**super().get_config(), "threshold": self.threshold}


@keras.saving.register_keras_serializable(package=PACKAGE)
class LogVolumes(layers.Layer):
    """``log(1 + soft voxel count)`` of each mask and, for two masks, ``log(V2+1) - log(V1+1)``
    (the log volume ratio post/pre). Float32."""

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)

    def call(self, inputs: Sequence) -> object:
        logs = [ops.log1p(ops.sum(ops.cast(m, "float32"), axis=(1, 2, 3))) for m in inputs]
        if len(logs) == 2:
            logs.append(logs[1] - logs[0])
        return ops.concatenate(logs, axis=-1)

    def compute_output_shape(self, input_shape: Sequence[Shape]) -> Shape:
        n = len(input_shape)
        return (input_shape[0][0], n + (n == 2))


def _sample_axes(x) -> tuple[int, ...]:
    return tuple(range(1, len(x.shape)))


def soft_dice_loss(y_true, y_pred, smooth: float = 1.0):
    """Per-sample soft Dice loss ``1 - (2|A.B| + s) / (|A| + |B| + s)`` (keras.ops)."""
    y_true = ops.cast(y_true, y_pred.dtype)
    axes = _sample_axes(y_pred)
    intersection = ops.sum(y_true * y_pred, axis=axes)
    total = ops.sum(y_true, axis=axes) + ops.sum(y_pred, axis=axes)
    return 1.0 - (2.0 * intersection + smooth) / (total + smooth)


@keras.saving.register_keras_serializable(package=PACKAGE)
class DiceBCELoss(keras.losses.Loss):
    """Soft Dice (per sample, smoothed) plus voxel-mean binary cross-entropy."""

    def __init__(self, smooth: float = 1.0, dice_weight: float = 1.0, bce_weight: float = 1.0,
                 name: str = "dice_bce", **kwargs) -> None:
        super().__init__(name=name, **kwargs)
        self.smooth, self.dice_weight, self.bce_weight = smooth, dice_weight, bce_weight

    def call(self, y_true, y_pred):
        y_true = ops.cast(y_true, y_pred.dtype)
        bce = ops.mean(ops.binary_crossentropy(y_true, y_pred), axis=_sample_axes(y_pred))
        dice = soft_dice_loss(y_true, y_pred, self.smooth)
        return self.dice_weight * dice + self.bce_weight * bce

    def get_config(self) -> dict:
        return {**super().get_config(), "smooth": self.smooth,
                "dice_weight": self.dice_weight, "bce_weight": self.bce_weight}


@keras.saving.register_keras_serializable(package=PACKAGE)
class WeightedBCELoss(keras.losses.Loss):
    """Binary cross-entropy with the positive class weighted by ``pos_weight``."""

    def __init__(self, pos_weight: float = 1.0, name: str = "weighted_bce", **kwargs) -> None:
        super().__init__(name=name, **kwargs)
        self.pos_weight = float(pos_weight)

    def call(self, y_true, y_pred):
        y_true = ops.cast(y_true, y_pred.dtype)
        eps = keras.config.epsilon()
        p = ops.clip(y_pred, eps, 1.0 - eps)
        loss = -(self.pos_weight * y_true * ops.log(p) + (1.0 - y_true) * ops.log(1.0 - p))
        return ops.mean(loss, axis=-1)

    def get_config(self) -> dict:
        return {**super().get_config(), "pos_weight": self.pos_weight}


@keras.saving.register_keras_serializable(package=PACKAGE)
class DiceMetric(keras.metrics.Metric):
    """Mean per-sample Dice of masks thresholded at ``threshold`` (empty vs empty = 1)."""

    def __init__(self, threshold: float = 0.5, name: str = "dice", **kwargs) -> None:
        super().__init__(name=name, **kwargs)
        self.threshold = threshold
        self.total = self.add_variable(shape=(), initializer="zeros", name="total")
        self.count = self.add_variable(shape=(), initializer="zeros", name="count")

    def update_state(self, y_true, y_pred, sample_weight=None) -> None:
        pred = ops.cast(y_pred > self.threshold, "float32")
        true = ops.cast(ops.reshape(y_true, ops.shape(pred)) > 0.5, "float32")
        axes = _sample_axes(pred)
        inter = ops.sum(true * pred, axis=axes)
        size = ops.sum(true, axis=axes) + ops.sum(pred, axis=axes)
        dice = (2.0 * inter + 1e-6) / (size + 1e-6)
        weight = ops.ones_like(dice) if sample_weight is None else ops.reshape(
            ops.cast(sample_weight, "float32"), ops.shape(dice))
        self.total.assign_add(ops.sum(dice * weight))
        self.count.assign_add(ops.sum(weight))

    def result(self):
        return ops.divide_no_nan(self.total, self.count)

    def reset_state(self) -> None:
        self.total.assign(0.0)
        self.count.assign(0.0)

    def get_config(self) -> dict:
        return {**super().get_config(), "threshold": self.threshold}


# --------------------------------------------------------------------------- geometry
def level_strides(shape_zyx: Sequence[int], depth: int) -> Strides:
    """Stride of each of the ``depth - 1`` downsampling steps, from the input size.

    y and x are halved while even and at least 4. z is halved only while it is even, at
    least 4, and not under half the in-plane size, so thick-slice volumes (few slices, many
    in-plane voxels) first get ``(1, 2, 2)`` steps until the grid is about isotropic in
    voxels. Example: (16, 40, 40), depth 4 -> (1,2,2), (2,2,2), (2,2,2).
    """
    z, y, x = (int(s) for s in shape_zyx)
    strides = []
    for _ in range(depth - 1):
        sy, sx = (2 if s % 2 == 0 and s >= 4 else 1 for s in (y, x))
        sz = 2 if z % 2 == 0 and z >= 4 and 2 * z >= max(y, x) else 1
        strides.append((sz, sy, sx))
        z, y, x = z // sz, y // sy, x // sx
    return tuple(strides)


def level_shapes(shape_zyx: Sequence[int], depth: int) -> list[tuple[int, int, int]]:
    """Spatial size of every U-Net level (level 0 = input resolution)."""
    shapes = [tuple(int(s) for s in shape_zyx)]
    for stride in level_strides(shape_zyx, depth):
        shapes.append(tuple(s // k for s, k in zip(shapes[-1], stride, strict=True)))
    return shapes


def encoder_join_level(depth: int) -> int:
    """The encoder level joined: 2 (1/4 resolution), or depth - 2 for a depth-3 network."""
    return min(2, depth - 2)


def receptive_field(depth: int, strides: Sequence[Sequence[int]] | None = None,
                    where: str = "bottleneck") -> tuple[int, int, int]:
    """Theoretical receptive field (voxels per z, y, x axis) of one output voxel.

    ``where="bottleneck"``: the deepest encoder features (the bottleneck join);
    ``where="mask"``: the full-resolution segmentation output. Standard recursion
    ``rf += (k - 1) * jump``; nearest-neighbour upsampling by ``s`` divides the jump by ``s``.
    ``strides`` defaults to isotropic 2s; pass :func:`level_strides` for a given input.
    """
    if where not in ("bottleneck", "mask"):
        raise ValueError(f"where must be 'bottleneck' or 'mask', not {where!r}")
    strides = [(2, 2, 2)] * (depth - 1) if strides is None else [tuple(s) for s in strides]
    return tuple(_rf_axis([s[axis] for s in strides], where) for axis in range(3))


def _rf_axis(steps: Sequence[int], where: str) -> int:
    rf, jump = 1.0, 1.0
    kernels = [(3, 1), (3, 1), (3, 1)]  # level-0 input conv and context module
    for s in steps:
        kernels += [(3, s), (3, 1), (3, 1)]  # strided conv and context module
    for k, s in kernels:
        rf, jump = rf + (k - 1) * jump, jump * s
    if where == "mask":
        for s in reversed(steps):
            jump /= s
            rf += (3 - 1) * jump * 2  # up-conv and localisation 3x3x3 (its 1x1x1 adds 0)
    return math.ceil(rf)


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
    :mod:`utils.readout`). The ``single_task`` variant has no segmentation loss, so its
    backbone always learns from the pCR loss. ``sync_batchnorm``: the head's batch norm
    averages its statistics over all replicas (set under a distribution strategy, so that
    every worker ends with the same moving statistics).
    """
    _check_args(input_shape_zyxc, variant, comparison)
    spec, seeds = VARIANTS[variant], _Seeds(seed)
    inputs = {b: keras.Input(tuple(input_shape_zyxc), name=b) for b in spec.inputs}
    kwargs = dict(depth=depth, base_filters=base_filters, dropout=dropout,
                  segmentation=spec.segmentation or spec.head == "tumour", _seeds=seeds)
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


def _join_levels(depth: int) -> dict[str, int]:
    return {"encoder": encoder_join_level(depth), "bottleneck": depth - 1,
            "deep_supervision": 1}


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
    level = _join_levels(depth)
    vectors = []
    for key in joins:
        x = _conv_block(_compare(features, key, comparison), base_filters * 2 ** level[key],
                        f"join_{key}", seeds)
        vectors.append(layers.GlobalAveragePooling3D(name=f"join_{key}_gap")(x))
    x = layers.Concatenate(name="head_concat")(vectors) if len(vectors) > 1 else vectors[0]
    return _final_dense(x, dropout, seeds, zero_init=False)


def level_pool_sizes(shape_zyx: Sequence[int], depth: int) -> list[tuple[int, int, int]]:
    """Cumulative downsampling factor of every U-Net level (level 0: (1, 1, 1))."""
    sizes = [(1, 1, 1)]
    for stride in level_strides(shape_zyx, depth):
        sizes.append(tuple(a * b for a, b in zip(sizes[-1], stride, strict=True)))
    return sizes


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
    level = _join_levels(depth)
    vectors = []
    for key in joins:
        weight = region if level[key] == 0 else layers.AveragePooling3D(
            pools[level[key]], name=f"join_{key}_region")(region)
        vectors.append(MaskedAverage(name=f"join_{key}_tumour_mean")(
            [_compare(features, key, comparison), weight]))
    vectors.append(LogVolumes(name="tumour_log_volumes")([masks[b] for b in branches]))
    for image in (b for b in BRANCHES if b in inputs):
        for where in branches:
            vectors.append(MaskedMoments(name=f"tumour_moments_{image}_in_{where}")(
                [inputs[image], masks[where]]))
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


def head_vector_model(model: keras.Model) -> keras.Model:
    """A model from the RP-Net inputs to the head vector that the final ``pcr`` unit reads."""
    return keras.Model(model.inputs, model.get_layer("pcr").input)


def set_readout(model: keras.Model, coef: Sequence[float], intercept: float) -> None:
    """Replace the final ``pcr`` unit's weights (a logistic readout on the head vector)."""
    dense = model.get_layer("pcr")
    kernel = np.asarray(coef, dtype="float32").reshape(dense.kernel.shape)
    dense.set_weights([kernel, np.asarray([intercept], dtype="float32")])


# --------------------------------------------------------------------------- compile / load
def make_optimizer(name: str = "adam", learning_rate: float = 1e-3) -> keras.optimizers.Optimizer:
    """``adam`` (default: Adam, robust for small cohorts) or ``sgd`` (momentum 0.9, as the
    authors; use ``learning_rate=1e-2`` for their setting)."""
    if name == "adam":
        return keras.optimizers.Adam(learning_rate)
    if name == "sgd":
        return keras.optimizers.SGD(learning_rate, momentum=0.9)
    raise ValueError(f"unknown optimizer {name!r}; choose one of {OPTIMIZERS}")


def rpnet_losses(variant: str = "full", pcr_pos_weight: float | None = None) -> dict:
    """Loss per output: Dice+BCE per mask, (optionally positive-weighted) BCE on pcr."""
    outputs = VARIANTS[variant].outputs
    losses = {name: DiceBCELoss() for name in outputs if name != "pcr"}
    losses["pcr"] = (WeightedBCELoss(pcr_pos_weight) if pcr_pos_weight
                     else keras.losses.BinaryCrossentropy())
    return losses


def compile_rpnet(model: keras.Model, variant: str = "full", learning_rate: float = 1e-3,
                  loss_weights: Mapping[str, float] | None = None,
                  pcr_pos_weight: float | None = None, optimizer: str = "adam",
                  jit_compile: bool | str = "auto", **compile_kwargs) -> keras.Model:
    """Compile ``model`` with the RP-Net losses, loss weights and metrics; returns it.

    Loss weights default to the release (pcr 1.0, each mask 0.2); ``loss_weights``
    overrides some of them. ``pcr_pos_weight`` (e.g. n_negative / n_positive) weights the
    positive class of the pcr BCE. Metrics: ``dice`` on masks, ``auc`` on pcr.
    ``jit_compile="auto"``: see :func:`resolve_jit_compile`. Other keyword arguments
    (``run_eagerly``, ``steps_per_execution``) go to ``model.compile``.
    """
    outputs = VARIANTS[variant].outputs
    if set(model.output_names) != set(outputs):
        raise ValueError(f"model outputs {model.output_names} are not variant {variant!r}'s")
    weights = {**DEFAULT_LOSS_WEIGHTS, **(loss_weights or {})}
    metrics = {name: [DiceMetric(name="dice")] for name in outputs if name != "pcr"}
    metrics["pcr"] = [keras.metrics.AUC(name="auc")]
    model.compile(optimizer=make_optimizer(optimizer, learning_rate),
                  loss=rpnet_losses(variant, pcr_pos_weight),
                  loss_weights={name: weights[name] for name in outputs},
                  metrics=metrics, jit_compile=resolve_jit_compile(jit_compile),
                  **compile_kwargs)
    return model


def resolve_jit_compile(jit_compile: bool | str = "auto") -> bool | str:
    """``"auto"`` -> no XLA for TensorFlow on CPU, else Keras's own ``"auto"``.

    XLA's CPU 3D convolutions bypass oneDNN: a training step of this network was ~20x
    slower with XLA than without on a 2-core CPU (``benchmarks/bench_model.py``). JAX
    needs XLA; TensorFlow on a GPU gets Keras's choice.
    """
    if jit_compile != "auto" or keras.backend.backend() != "tensorflow":
        return jit_compile
    import tensorflow as tf

    return "auto" if tf.config.list_physical_devices("GPU") else False


def load_rpnet(path: str | Path, compile: bool = True) -> keras.Model:
    """Load a saved ``.keras`` RP-Net with ``safe_mode=True``."""
    return keras.saving.load_model(path, compile=compile, safe_mode=True)


def variant_of(model: keras.Model) -> str:
    """The variant name of a model built by :func:`build_rpnet`."""
    return model.name.removeprefix("rpnet_")


# --------------------------------------------------------------------------- introspection
def _graph_nodes(model: keras.Model) -> list:
    """Every layer call (node) of a functional model, inputs first."""
    by_depth = model._nodes_by_depth  # Keras 3 Functional internals (no public equivalent)
    return [node for depth in sorted(by_depth, reverse=True) for node in by_depth[depth]]


def conv_flops(kernel_size: Sequence[int], in_channels: int, out_channels: int,
               out_spatial: Sequence[int], groups: int = 1) -> int:
    """FLOPs (2 x multiply-adds) of one convolution; bias adds are not counted."""
    macs = math.prod(kernel_size) * (in_channels // groups) * out_channels * math.prod(out_spatial)
    return 2 * int(macs)


def _node_flops(node) -> int:
    layer = node.operation
    if isinstance(layer, keras.Model):
        return _model_flops(layer)
    if isinstance(layer, layers.Dense):
        return 2 * int(node.input_tensors[0].shape[-1]) * layer.units
    if isinstance(layer, layers.Conv3D | layers.Conv2D | layers.Conv1D):
        out = node.output_tensors[0].shape
        return conv_flops(layer.kernel_size, int(node.input_tensors[0].shape[-1]), layer.filters,
                          out[1:-1], layer.groups)
    return 0


def _model_flops(model: keras.Model) -> int:
    return sum(_node_flops(node) for node in _graph_nodes(model))


def count_flops(model_or_config: keras.Model | Mapping,
                input_shape: Sequence[int] | None = None) -> int:
    """Forward-pass FLOPs per sample: 2 x multiply-adds of every conv and dense layer call.

    Counted analytically from kernel size, channels and output size; a shared backbone
    counts once per call (both branches). Normalisation, activations, pooling, adds and
    biases are ignored (a few % at most). Give a built model, or a dict of
    :func:`build_rpnet` keyword arguments plus ``input_shape`` (z, y, x, C).
    """
    if isinstance(model_or_config, keras.Model):
        return _model_flops(model_or_config)
    if input_shape is None:
        raise ValueError("input_shape is required with a config")
    return _model_flops(build_rpnet(input_shape, **dict(model_or_config)))


def _block_name(name: str) -> str:
    for key in JOINS:
        if name.startswith(f"join_{key}"):
            return f"join_{key}"
    parts = name.split("_")
    return "_".join(parts[:2]) if parts[0] == "mask" else parts[0]


def _layer_rows(model: keras.Model, component: str) -> list[dict]:
    rows = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            continue
        shape = tuple(layer.output.shape[1:]) if not isinstance(layer.output, dict) else None
        rows.append({"component": component, "block": _block_name(layer.name),
                     "output_shape": shape, "params": layer.count_params()})
    return rows


def _branch_order(name: str) -> int:
    return BRANCHES.index(name) if name in BRANCHES else len(BRANCHES)


def block_table(model: keras.Model) -> pd.DataFrame:
    """One row per block: component, block name, output shape (last layer), parameters.

    Backbone blocks appear once per backbone; ``component`` says which branches use it.
    """
    rows = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            users = sorted((n.input_tensors[0].name for n in _graph_nodes(model)
                            if n.operation is layer), key=_branch_order)
            rows += _layer_rows(layer, f"{layer.name} ({', '.join(users)})")
    rows += _layer_rows(model, "siamese head")
    frame = pd.DataFrame(rows)
    grouped = frame.groupby(["component", "block"], sort=False)
    return grouped.agg(output_shape=("output_shape", "last"), params=("params", "sum")
                       ).reset_index()


def parameter_counts(model: keras.Model) -> dict[str, int]:
    """Trainable, non-trainable and total parameter counts (shared weights once)."""
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    frozen = sum(int(np.prod(w.shape)) for w in model.non_trainable_weights)
    return {"trainable": trainable, "non_trainable": frozen, "total": trainable + frozen}


# --------------------------------------------------------------------------- schematic
def draw_architecture(ax=None, depth: int = 4, base_filters: int = 8,
                      comparison: str = "subtract", variant: str = "full"):
    """A schematic of the Siamese RP-Net (matplotlib patches only); returns the Figure."""
    import matplotlib

    if ax is None and matplotlib.get_backend().lower() not in (
            "agg", "module://matplotlib_inline.backend_inline"):
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    spec = VARIANTS[variant]
    if ax is None:
        _, ax = plt.subplots(figsize=(11, 5.5))
    ax.set_axis_off()
    ax.set_xlim(-2.2, 2 * depth + 3.2)
    ax.set_ylim(-5.4, 5.4)
    ends = {b: _draw_branch(ax, b, depth, base_filters, spec) for b in spec.inputs}
    _draw_joins(ax, depth, spec, comparison, ends)
    shared = ("one branch" if len(spec.inputs) == 1 else "one shared backbone (tied weights)"
              if spec.tied else "two backbones (untied)")
    ax.text(depth - 1, -5.2, "blue: encoder level (filters); orange: decoder level; grey: skip "
            "connections; purple: joins; green: segmentation outputs", ha="center", fontsize=7)
    ax.set_title(f"3D RP-Net, variant '{variant}': {shared}, depth {depth}, "
                 f"{base_filters} base filters")
    return ax.figure


def _box(ax, x: float, y: float, w: float, h: float, color: str, text: str = "",
         size: int = 7) -> None:
    from matplotlib.patches import FancyBboxPatch

    ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.02",
                                facecolor=color, edgecolor="0.2", linewidth=0.8))
    if text:
        ax.text(x, y, text, ha="center", va="center", fontsize=size)


def _arrow(ax, start: tuple[float, float], end: tuple[float, float], color: str = "0.3",
           style: str = "-|>") -> None:
    from matplotlib.patches import FancyArrowPatch

    ax.add_patch(FancyArrowPatch(start, end, arrowstyle=style, mutation_scale=8, color=color,
                                 linewidth=0.8, shrinkA=2, shrinkB=2))


def _level_x(depth: int, level: int, decoder: bool) -> float:
    return 2 * depth - 2 - level if decoder else level


def _draw_branch(ax, branch: str, depth: int, base_filters: int, spec: VariantSpec) -> dict:
    """One U-Net branch, mirrored: pre on top, post below; returns join anchor points."""
    sign = 1 if branch == "pre" else -1
    level_y = {level: sign * (4.2 - 0.8 * level) for level in range(depth)}
    _box(ax, -1.4, level_y[0], 1.1, 0.8, "#d9e6f2", f"{branch}\nT2W + DWI")
    _arrow(ax, (-0.85, level_y[0]), (-0.3, level_y[0]))
    for level in range(depth):
        h = 1.0 - 0.15 * level
        _box(ax, level, level_y[level], 0.55, h, "#9ecae1",
             f"{base_filters * 2 ** level}", 6)
        if level:
            _arrow(ax, (level - 0.72, level_y[level - 1]), (level - 0.28, level_y[level]))
    last = 0 if spec.segmentation else 1
    for level in range(depth - 2, last - 1, -1):
        x = _level_x(depth, level, True)
        _box(ax, x, level_y[level], 0.55, 1.0 - 0.15 * level, "#fdd0a2",
             f"{base_filters * 2 ** level}", 6)
        _arrow(ax, (x - 0.72, level_y[level + 1]), (x - 0.28, level_y[level]))
        _arrow(ax, (level + 0.3, level_y[level]), (x - 0.3, level_y[level]), "0.6", "-")
    if spec.segmentation:
        x = 2 * depth - 1
        _box(ax, x, level_y[0], 0.9, 0.6, "#c7e9c0", MASKS[branch], 7)
        _arrow(ax, (x - 1, level_y[0]), (x - 0.45, level_y[0]))
    return {"encoder": (encoder_join_level(depth), level_y[encoder_join_level(depth)]),
            "bottleneck": (depth - 1, level_y[depth - 1]),
            "deep_supervision": (_level_x(depth, 1, True), level_y[1])}


def _draw_joins(ax, depth: int, spec: VariantSpec, comparison: str, ends: dict) -> None:
    symbol = {"subtract": "post−pre", "concat": "concat", "abs_diff": "|post−pre|"}[comparison]
    head_x = 2 * depth + 1.6
    head = ("+ tumour\nvolumes,\nmasked\nmeans/SDs\nBN, Dense σ\n→ pCR" if spec.head == "tumour"
            else "concat\ndropout\nDense σ\n→ pCR")
    _box(ax, head_x, 0, 1.1, 1.9 if spec.head == "tumour" else 1.2, "#fcbba1", head, 7)
    pooling = "mean in\ntumour" if spec.head == "tumour" else "conv+GAP"
    for i, key in enumerate(spec.joins):
        x = next(iter(ends.values()))[key][0]
        y = 0.9 * (1 - i) if len(spec.joins) > 1 else 0
        text = symbol if len(ends) > 1 else "features"
        _box(ax, x, y, 1.0, 0.5, "#e5d8f0", f"{text}\n{pooling}", 6)
        for anchor in ends.values():
            side = 1 if anchor[key][1] > 0 else -1
            _arrow(ax, (x, anchor[key][1] - side * 0.4), (x, y + side * 0.25), "#756bb1")
        _arrow(ax, (x + 0.5, y), (head_x - 0.55, 0), "#756bb1")
    if spec.tied and len(ends) > 1:
        ax.text(-1.4, 0, "shared\nweights", ha="center", va="center", fontsize=7,
                style="italic")
        _arrow(ax, (-1.4, 0.4), (-1.4, 3.7), "0.4", "<|-|>")
        _arrow(ax, (-1.4, -0.4), (-1.4, -3.7), "0.4", "<|-|>")


# --------------------------------------------------------------------------- head figure
def pooled_region(mask_zyx: np.ndarray, pool_size: Sequence[int]) -> np.ndarray:
    """Block means of a (z, y, x) mask over ``pool_size`` blocks (as AveragePooling3D)."""
    shape = [n // k for n, k in zip(mask_zyx.shape, pool_size, strict=True)]
    blocks = np.asarray(mask_zyx, float)[:shape[0] * pool_size[0], :shape[1] * pool_size[1],
                                          :shape[2] * pool_size[2]]
    return blocks.reshape(shape[0], pool_size[0], shape[1], pool_size[1], shape[2],
                          pool_size[2]).mean(axis=(1, 3, 5))


def plot_tumour_head(image_pre: np.ndarray, image_post: np.ndarray, mask_pre: np.ndarray,
                     mask_post: np.ndarray, depth: int, dwi_channel: int = 1):
    """How the tumour-guided head pools: on the slice with the largest tumour, the pre and
    post DWI with both masks, the tumour region (union of the masks) and that region pooled
    to each join's grid (the weights of the masked means); returns the Figure."""
    import matplotlib.pyplot as plt

    region = np.maximum(mask_pre > 0, mask_post > 0).astype(float)
    z = int(np.argmax(region.reshape(len(region), -1).sum(1)))
    pools = level_pool_sizes(region.shape, depth)
    levels = _join_levels(depth)
    fig, axes = plt.subplots(1, 3 + len(JOINS), figsize=(2.6 * (3 + len(JOINS)), 3.3))
    for ax, (title, image) in zip(axes[:2], (("pre DWI", image_pre), ("post DWI", image_post)),
                                  strict=True):
        ax.imshow(image[z, ..., dwi_channel], cmap="gray")
        ax.contour(mask_pre[z], [0.5], colors="#1f77b4", linewidths=1)
        ax.contour(mask_post[z], [0.5], colors="#d62728", linewidths=1)
        ax.set_title(f"{title}\n(blue: pre mask, red: post)", fontsize=8)
    axes[2].imshow(region[z], cmap="magma", vmin=0, vmax=1)
    axes[2].set_title("tumour region\n(pre ∪ post), full grid", fontsize=8)
    for ax, key in zip(axes[3:], JOINS, strict=True):
        size = pools[levels[key]]
        pooled = pooled_region(region, size)
        ax.imshow(pooled[min(z // size[0], len(pooled) - 1)], cmap="magma", vmin=0, vmax=1)
        ax.set_title(f"weights at the {key.replace('_', ' ')}\njoin "
                     f"({'x'.join(map(str, pooled.shape))} grid)", fontsize=8)
    for ax in axes:
        ax.set_axis_off()
    fig.tight_layout()
    return fig
