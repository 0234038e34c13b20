"""Devices, precision and distribution: :func:`setup_device`, and multi-worker Keras 3 fixes.

Devices: mixed precision (``mixed_bfloat16``) and XLA when a GPU is present, float32 on CPU
(where Keras' ``jit_compile="auto"`` keeps XLA off: its CPU 3-D convolutions are slow).
With the TensorFlow backend and several GPUs, a ``tf.distribute.MirroredStrategy`` (the
profile's batch size is then per replica). Multi-worker: set ``TF_CONFIG`` on every worker
(``{"cluster": {"worker": ["host1:port", ...]}, "task": {"type": "worker", "index": i}}``)
and run the same code on each; :func:`setup_device` then uses
``MultiWorkerMirroredStrategy``. Give each worker its own ``config.Paths`` run folder
(worker 0, the chief, holds the checkpoints that matter). JAX and PyTorch: one device.

Keras 3.15's TensorFlow trainer has two gaps with ``MultiWorkerMirroredStrategy``, both met by
RP-Net:

1. before the first step it reduces one distributed batch to build the model symbolically,
   and ``strategy.reduce`` cannot take a nested batch (RP-Net's ``{"pre", "post"}`` inputs
   and dict of targets): "Attempt to convert a value ({'pre': PerReplica ...}) to a Tensor";
2. it averages every per-replica log over axis 0, which fails for the scalar losses and
   metrics of every model: "Invalid reduction dimension 0 for input with 0 dimensions".

:func:`patch_keras_for_multi_worker` builds from the local replica's batch (building needs
shapes only, and the batches of the replicas may differ in size: the last validation batch)
and reduces logs element-wise (axis 0 only for tensors that have one); it changes nothing
for any other strategy or without one. ``tests/test_multiworker.py`` trains with two workers
on loopback addresses and checks that both end with the same weights.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from dataclasses import dataclass
from typing import Any

import keras

_PATCHED = False


def patch_keras_for_multi_worker() -> None:
    """Make Keras' TF trainer work with MultiWorkerMirroredStrategy (idempotent)."""
    global _PATCHED
    if _PATCHED:
        return
    from keras.src.backend.tensorflow import trainer

    original_reduce = trainer.reduce_per_replica

    def reduce_per_replica(values: Any, strategy: Any, reduction: str) -> Any:
        if not (trainer._collective_all_reduce_multi_worker(strategy)
                and reduction in ("auto", "mean")):
            return original_reduce(values, strategy, reduction)
        return trainer.tree.map_structure(lambda v: _mean(v, strategy), values)

    def maybe_symbolic_build(self: Any, iterator: Any = None, data_batch: Any = None) -> None:
        if self._distribute_strategy is None:
            return
        if iterator is not None:
            for _, _, batches in iterator:
                data_batch = trainer.tree.map_structure(
                    lambda v: _local(v, self.distribute_strategy), next(batches))
                break
        with self.distribute_strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    trainer.reduce_per_replica = reduce_per_replica
    trainer.TensorFlowTrainer._maybe_symbolic_build = maybe_symbolic_build
    _PATCHED = True


def _mean(value: Any, strategy: Any) -> Any:
    """Mean over replicas of one per-replica log, and over its axis 0 when it has one (as
    Keras reduces logs)."""
    import tensorflow as tf

    if not isinstance(value, tf.distribute.DistributedValues):
        return value
    rank = strategy.experimental_local_results(value)[0].shape.rank
    return strategy.reduce("MEAN", value, axis=0 if rank else None)


def _local(value: Any, strategy: Any) -> Any:
    """This worker's first replica's part of a per-replica value (no collective op)."""
    import tensorflow as tf

    if not isinstance(value, tf.distribute.DistributedValues):
        return value
    return strategy.experimental_local_results(value)[0]


# --------------------------------------------------------------------------- devices
@dataclass
class DeviceSetup:
    """The backend, accelerators, precision policy and distribution strategy in use."""

    backend: str
    gpus: list[str]
    policy: str
    strategy: Any = None  # tf.distribute strategy or None
    replicas: int = 1

    @property
    def jit_compile(self) -> str | bool:
        """XLA where it helps: Keras' "auto" (on for GPU; off on CPU and under determinism)."""
        return "auto" if self.gpus else False

    def scope(self) -> contextlib.AbstractContextManager:
        return self.strategy.scope() if self.strategy is not None else contextlib.nullcontext()


def gpu_names(backend: str | None = None) -> list[str]:
    """Names of the GPUs visible to the Keras backend (empty on CPU)."""
    backend = backend or keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        return [tf.config.experimental.get_device_details(g).get("device_name", g.name)
                for g in gpus]
    if backend == "jax":
        import jax

        return [str(d.device_kind) for d in jax.devices() if d.platform == "gpu"]
    if backend == "torch":
        import torch

        return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return []


_STRATEGIES: dict[str, Any] = {}  # one distribution strategy per process (TF requires it)


def _strategy(backend: str, gpus: list[str], multi_gpu: bool) -> Any:
    """MultiWorkerMirroredStrategy when ``TF_CONFIG`` is set, MirroredStrategy over several
    GPUs, else None. Created once per process and reused. Under another backend a warning
    says that distribution needs TensorFlow, and training runs on one device."""
    wanted = multi_gpu and (len(gpus) > 1 or bool(os.environ.get("TF_CONFIG")))
    if not wanted:
        return None
    if backend != "tensorflow":
        warnings.warn(f"distributed training (TF_CONFIG or several GPUs) uses tf.distribute and "
                      f"needs the TensorFlow backend; Keras uses {backend!r}: training on one "
                      "device", RuntimeWarning, stacklevel=3)
        return None
    import tensorflow as tf

    kind = "multi_worker" if os.environ.get("TF_CONFIG") else "mirrored"
    if kind == "multi_worker":
        patch_keras_for_multi_worker()
    if kind not in _STRATEGIES:
        _STRATEGIES[kind] = (tf.distribute.MultiWorkerMirroredStrategy() if kind == "multi_worker"
                             else tf.distribute.MirroredStrategy())
    return _STRATEGIES[kind]


def setup_device(mixed_precision: bool | str = "auto", multi_gpu: bool = True) -> DeviceSetup:
    """Pick precision and strategy: bf16 + XLA on GPU, float32 on CPU; mirrored over GPUs.

    Sets the global Keras dtype policy. The model's sigmoid outputs are float32 in any policy
    (utils.model.rpnet builds them with ``dtype="float32"``).
    """
    backend = keras.backend.backend()
    gpus = gpu_names(backend)
    bf16 = bool(gpus) if mixed_precision == "auto" else bool(mixed_precision)
    policy = "mixed_bfloat16" if bf16 else "float32"
    keras.mixed_precision.set_global_policy(policy)
    strategy = _strategy(backend, gpus, multi_gpu)
    replicas = strategy.num_replicas_in_sync if strategy is not None else 1
    return DeviceSetup(backend, gpus, policy, strategy, replicas)


def device_summary() -> str:
    """One paragraph for the notebook: backend, devices, precision, strategy."""
    backend = keras.backend.backend()
    gpus = gpu_names(backend)
    cpus = os.cpu_count()
    lines = [f"Keras {keras.__version__}, backend {backend}, {cpus} CPU core(s)"]
    if gpus:
        lines.append(f"{len(gpus)} GPU(s): {', '.join(gpus)}; mixed_bfloat16 + XLA")
        if backend == "tensorflow" and (len(gpus) > 1 or os.environ.get("TF_CONFIG")):
            lines.append("distribution: tf.distribute mirrored strategy")
    else:
        lines.append("no GPU: float32 on CPU (op determinism on, no XLA)")
    return "\n".join(lines)
