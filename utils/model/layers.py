"""RP-Net's custom Keras layers (the comparison and the tumour-guided head).

All use ``keras.ops`` only (TensorFlow, JAX and PyTorch backends) and are registered for
serialisation under the package ``rpnet``, so ``.keras`` files load with
``keras.saving.load_model(path, safe_mode=True)`` once this module is imported.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import layers, ops

PACKAGE = "rpnet"
Shape = tuple[int, ...]


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
