"""The Keras dataset of one variant: batches of patients, balanced and augmented per epoch.

One sample is one patient (:class:`utils.training.patients.PatientArrays`): ``x = {"pre",
"post"}`` (z, y, x, C) and ``y = {"mask_pre", "mask_post"}`` (z, y, x, 1) plus ``"pcr"`` (1,),
filtered to the variant's inputs and outputs. The order (:mod:`utils.training.sampling`) and
the augmentation (:mod:`utils.training.augment`) of an epoch depend only on ``(seed, epoch)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import keras
import numpy as np

from utils.model.variants import VARIANTS
from utils.repro import derived_rng
from utils.training.augment import AugmentConfig, augment_patient, sample_rng
from utils.training.patients import PatientArrays, TrainData
from utils.training.sampling import balanced_epoch


def _targets(arrays: Sequence[Mapping[str, np.ndarray]], pcr: Sequence[int],
             outputs: Sequence[str]) -> dict[str, np.ndarray]:
    y: dict[str, np.ndarray] = {}
    for name in outputs:
        if name == "pcr":
            y[name] = np.asarray(pcr, dtype=np.float32).reshape(-1, 1)
        else:
            y[name] = np.stack([a[name] for a in arrays]).astype(np.float32)[..., None]
    return y


class RPNetDataset(keras.utils.PyDataset):
    """Batches of patients for one variant (works under the TF, JAX and torch backends).

    ``training=True``: balanced, shuffled, augmented epochs whose content depends only on
    ``(seed, epoch, batch index)``; the epoch counter is :attr:`epoch` (:class:`EpochSync` sets
    it from Keras' epoch; :meth:`on_epoch_end` advances it). The batch order is the dataset's:
    fit it with ``shuffle=False``. Epoch length is a whole number of batches:
    ``steps_per_epoch`` if given, else the balanced epoch rounded up. ``training=False``:
    every patient once in sorted order, no augmentation (the last batch may be short).
    """

    def __init__(self, arrays: Mapping[str, PatientArrays], ids: Sequence[str], variant: str,
                 batch_size: int, *, training: bool = False, seed: int = 0,
                 augment: AugmentConfig | None = None, pcr_fraction: float | None = None,
                 steps_per_epoch: int | None = None, epoch: int = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not ids:
            raise ValueError("a dataset needs at least one patient")
        missing = [p for p in ids if p not in arrays]
        if missing:
            raise KeyError(f"patients without cached arrays: {missing[:10]}")
        self.arrays, self.ids = arrays, sorted(ids)
        self.spec, self.batch_size, self.training = VARIANTS[variant], batch_size, training
        self.seed, self.augment = seed, augment if augment is not None else AugmentConfig()
        self.pcr_fraction, self.steps_per_epoch, self.epoch = pcr_fraction, steps_per_epoch, epoch
        self._labels = {p: arrays[p].pcr for p in self.ids}
        self._order: tuple[int, list[str]] | None = None

    def epoch_order(self, epoch: int | None = None) -> list[str]:
        """Patient ids of every sample of an epoch, in batch order."""
        epoch = self.epoch if epoch is None else epoch
        if not self.training:
            return list(self.ids)
        cached = self._order
        if cached is not None and cached[0] == epoch:
            return cached[1]
        order = self._balanced_rounds(epoch)
        self._order = (epoch, order)
        return order

    def _balanced_rounds(self, epoch: int) -> list[str]:
        first = balanced_epoch(self.ids, self._labels, self.pcr_fraction,
                               derived_rng(self.seed, "order", epoch, 0))
        n_batches = self.steps_per_epoch or math.ceil(len(first) / self.batch_size)
        order, rounds = list(first), 1
        while len(order) < n_batches * self.batch_size:
            order += balanced_epoch(self.ids, self._labels, self.pcr_fraction,
                                    derived_rng(self.seed, "order", epoch, rounds))
            rounds += 1
        return order[:n_batches * self.batch_size]

    def __len__(self) -> int:
        return math.ceil(len(self.epoch_order()) / self.batch_size)

    def __getitem__(self, index: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        if not 0 <= index < len(self):
            raise IndexError(f"batch {index} out of range ({len(self)} batches)")
        epoch = self.epoch
        start = index * self.batch_size
        ids = self.epoch_order(epoch)[start:start + self.batch_size]
        samples = [self._sample(pid, epoch, start + i) for i, pid in enumerate(ids)]
        x = {tp: np.stack([s[f"image_{tp}"] for s in samples]) for tp in self.spec.inputs}
        return x, _targets(samples, [self._labels[p] for p in ids], self.spec.outputs)

    def _sample(self, pid: str, epoch: int, position: int) -> dict[str, np.ndarray]:
        p = self.arrays[pid]
        if self.training and self.augment.enabled:
            return augment_patient(p, sample_rng(self.seed, epoch, position), self.augment)
        return {"image_pre": p.image_pre, "image_post": p.image_post,
                "mask_pre": p.mask_pre, "mask_post": p.mask_post}

    def on_epoch_end(self) -> None:
        if self.training:
            self.epoch += 1


class EpochSync(keras.callbacks.Callback):
    """Sets a dataset's epoch from Keras' epoch number before each epoch, so that the batches
    of epoch ``e`` are the same in an uninterrupted and in a resumed ``fit``.

    Keras epoch ``e`` (0-based) draws the dataset's epoch ``e + 1``: the earlier loop called
    ``fit`` once per epoch, and Keras advances a PyDataset once (``on_epoch_end``) before the
    first batch of every ``fit``; the same numbering keeps its results reproducible."""

    def __init__(self, dataset: RPNetDataset) -> None:
        super().__init__()
        self.dataset = dataset

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.dataset.epoch = epoch + 1


def stacked_inputs(data: TrainData, ids: Sequence[str], variant: str
                   ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """All of ``ids`` as one unaugmented batch (x, y) for a variant."""
    spec = VARIANTS[variant]
    arrays = [data.arrays[p] for p in ids]
    x = {tp: np.stack([a.image(tp) for a in arrays]) for tp in spec.inputs}
    masks = [{"mask_pre": a.mask_pre, "mask_post": a.mask_post} for a in arrays]
    return x, _targets(masks, [a.pcr for a in arrays], spec.outputs)
