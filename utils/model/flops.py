"""Counting RP-Net: forward-pass FLOPs, the block table and parameter counts."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import keras
import numpy as np
import pandas as pd
from keras import layers

from utils.model.rpnet import build_rpnet
from utils.model.variants import BRANCHES, JOINS


def graph_nodes(model: keras.Model) -> list:
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
    return sum(_node_flops(node) for node in graph_nodes(model))


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
            users = sorted((n.input_tensors[0].name for n in graph_nodes(model)
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
