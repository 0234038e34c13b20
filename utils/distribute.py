"""Multi-worker training with ``tf.distribute.MultiWorkerMirroredStrategy`` under Keras 3.

Keras 3.15's TensorFlow trainer has two gaps with this strategy, both met by RP-Net:

1. before the first step it reduces one distributed batch to build the model symbolically,
   and ``strategy.reduce`` cannot take a nested batch (RP-Net's ``{"pre", "post"}`` inputs
   and dict of targets): "Attempt to convert a value ({'pre': PerReplica ...}) to a Tensor";
2. it averages every per-replica log over axis 0, which fails for the scalar losses and
   metrics of every model: "Invalid reduction dimension 0 for input with 0 dimensions".

:func:`patch_keras_for_multi_worker` replaces those two steps with element-wise
reductions (axis 0 only for tensors that have one); it changes nothing for any other
strategy or without one. ``tests/test_multiworker.py`` trains with two workers on loopback
addresses and checks that both end with the same weights.
"""

from __future__ import annotations

from typing import Any

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
                    lambda v: _mean(v, self.distribute_strategy, over_batch=False),
                    next(batches))
                break
        with self.distribute_strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    trainer.reduce_per_replica = reduce_per_replica
    trainer.TensorFlowTrainer._maybe_symbolic_build = maybe_symbolic_build
    _PATCHED = True


def _mean(value: Any, strategy: Any, over_batch: bool = True) -> Any:
    """Mean over replicas of one per-replica value; with ``over_batch``, also over its axis 0
    when it has one (as Keras reduces logs), else element-wise (a batch keeps its shape)."""
    import tensorflow as tf

    if not isinstance(value, tf.distribute.DistributedValues):
        return value
    rank = strategy.experimental_local_results(value)[0].shape.rank
    return strategy.reduce("MEAN", value, axis=0 if over_batch and rank else None)
