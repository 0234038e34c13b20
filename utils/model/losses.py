"""RP-Net's losses and segmentation metric: soft Dice + BCE per mask, weighted BCE on pCR,
thresholded Dice.

``keras.ops`` only (TensorFlow, JAX and PyTorch backends); registered for serialisation
under the package ``rpnet`` like the layers (:mod:`utils.model.layers`).
"""

from __future__ import annotations

import keras
from keras import ops

from utils.model.layers import PACKAGE


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
