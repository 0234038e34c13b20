"""Training settings that are not part of the profile (:class:`TrainConfig`) and the seeds of
each training replica.

Optimiser: Adam, learning rate from the profile (1e-3), halved by ``ReduceLROnPlateau`` when
the tune loss has not improved for ``plateau_patience`` epochs. The authors used SGD, lr 1e-2,
momentum 0.9, halved on plateau: ``TrainConfig.authors()``. Adam converges in the few epochs a
CPU budget allows; SGD at 1e-2 needs many more. The best model (``ModelCheckpoint``) is the
epoch with the lowest ``val_loss`` (the weighted training loss on the tune subset: smoother
than the AUC of a few dozen patients, and it covers both tasks).

Seeds: replica ``k`` of a variant (run names ``full``, ``full_seed1``, ...) draws its
initialisation (:func:`replica_seed`), sampling and augmentation (:func:`run_seed`) from its
own seed; the split and folds stay the same. Plain Python (no Keras): the model card reads it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from utils.config import Profile
from utils.repro import derive_seed
from utils.training.augment import AugmentConfig


@dataclass(frozen=True)
class TrainConfig:
    """Training settings that are not part of the profile (``None``: take the profile's)."""

    epochs: int | None = None
    batch_size: int | None = None
    learning_rate: float | None = None
    steps_per_epoch: int | None = None  # None: one pass over the balanced epoch
    optimizer: str = "adam"  # "adam" | "sgd" (momentum 0.9)
    schedule: str = "plateau"  # "plateau" | "cosine" | "constant"
    plateau_patience: int = 3
    plateau_factor: float = 0.5
    min_learning_rate: float = 1e-5
    monitor: str = "val_loss"  # a log key; val_*: the tune subset (Keras' validation_data)
    monitor_mode: str = "min"
    early_stopping_patience: int | None = None
    pcr_fraction: float | None = 0.5  # None: natural class frequencies
    tune_fraction: float = 0.2
    loss_weights: Mapping[str, float] | None = None  # None: the model's (pcr 1, masks 0.2)
    dropout: float = 0.3
    comparison: str = "subtract"  # how joins compare post with pre (utils.model.rpnet.build_rpnet)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    prior_correction: bool = True
    mixed_precision: bool | str = "auto"  # "auto": bf16 on GPU only
    deterministic: bool | None = None  # None: op determinism on CPU, off on GPU (XLA)
    tensorboard: bool = True  # logs/<run>/tensorboard (TensorFlow backend)
    workers: int = 1  # PyDataset threads
    seed: int = 0  # replica: 0 uses the profile seed; k > 0 derives new init/sampling seeds
    readout: bool = True  # stage 2: cross-validated logistic refit of the pcr unit
    pcr_gradient: bool = False  # let the pCR loss train the backbone (utils.model.rpnet)

    @classmethod
    def authors(cls, **changes: Any) -> TrainConfig:
        """The authors' optimiser: SGD, lr 1e-2, momentum 0.9, halved on plateau."""
        return cls(**{"optimizer": "sgd", "learning_rate": 1e-2, "schedule": "plateau",
                      **changes})

    def resolved(self, profile: Profile) -> TrainConfig:
        """A copy with epochs, batch size and learning rate filled from the profile."""
        return replace(self, epochs=self.epochs or profile.epochs,
                       batch_size=self.batch_size or profile.batch_size,
                       learning_rate=self.learning_rate or profile.learning_rate)



def replica_seed(profile: Profile, replica: int = 0) -> int:
    """Seed of one training replica: the profile's seed for replica 0, derived otherwise."""
    return profile.seed if replica == 0 else derive_seed(profile.seed, "replica", replica)


def run_seed(profile: Profile, replica: int = 0) -> int:
    """Sampling and augmentation seed: the same for every variant (a controlled ablation)."""
    return derive_seed(replica_seed(profile, replica), "train")
