"""Compiling and loading RP-Net: optimiser, the loss per output, loss weights, metrics,
XLA choice, and loading a saved ``.keras`` file."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import keras

from utils.model.losses import DiceBCELoss, DiceMetric, WeightedBCELoss
from utils.model.variants import VARIANTS

OPTIMIZERS: tuple[str, ...] = ("adam", "sgd")
# The released code's loss weights: pCR 1.0, each segmentation 0.2.
DEFAULT_LOSS_WEIGHTS: dict[str, float] = {"pcr": 1.0, "mask_pre": 0.2, "mask_post": 0.2}


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
