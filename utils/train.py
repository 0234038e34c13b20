"""Training of 3D RP-Net: data, augmentation, balanced sampling, split, resumable fit, predictions.

Data. One sample is one patient: both time points of the preprocessing cache
(``data/cache/<profile>/<patient>.npz``, docs/CONTRACTS.md), ``x = {"pre", "post"}`` (z, y, x, C)
and ``y = {"mask_pre", "mask_post"}`` (z, y, x, 1) plus ``"pcr"`` (1,), filtered to the variant's
inputs and outputs. All cached crops are loaded into memory once (a few MB per 100 patients).

Two stages. Stage 1 (:func:`fit_variant`) trains the network: segmentation of both exams and,
with the default tumour-guided head, the pCR unit on features the pCR loss cannot change
(``TrainConfig.pcr_gradient=False``: the backbone learns from the masks alone). Stage 2
(:func:`refit_readout`, :mod:`utils.readout`) refits the pCR unit in closed form: a logistic
regression on the head vectors of every training patient, feature set and penalty chosen by
5-fold cross-validation over the whole training cohort (``results/folds.csv``). Training
patients' scores in ``predictions.csv`` are their out-of-fold readout scores.

Model selection never sees a validation cohort. :func:`make_split` divides the TRAINING cohort
only, by patient and stratified by pCR, into ``fit`` (gradient updates) and ``tune`` (checkpoint
selection, learning-rate plateaus, early stopping); it is saved as ``results/split.csv``. The
internal and external validation cohorts are predicted once, by the selected model, at the end.
Columns ``tune_*`` of the training logs are measured on the tune subset.

Seeds: :func:`train_all` trains ``Profile.seeds`` replicas of the main model and of the
ablations that test the paper's claims (:data:`SEEDED_VARIANTS`; run names ``full``,
``full_seed1``, ...); replica ``k`` draws its initialisation, sampling and augmentation from
its own seed (:func:`replica_seed`), the split and folds stay the same.

Augmentation (training only, NumPy/SciPy): the same spatial transform for pre, post and both
masks (random in-plane flips, rotation about z within ±10°, isotropic scaling within ±10%, via
``scipy.ndimage.affine_transform`` in mm, order 1 for images and 0 for masks), then intensity
changes drawn per exam and channel (gamma, smooth multiplicative bias field, Gaussian noise).
Each sample's generator is seeded from ``(seed, epoch, position in the epoch)``, so batches do
not depend on worker order or on a restart.

Class imbalance: balanced sampling, as the authors' 5x oversampling of pCR patients. Every
epoch holds every fit patient once plus repeated pCR patients, so that pCR patients make up
``pcr_fraction`` (default 0.5) of the epoch. Oversampling shifts the output probability;
the stage-2 readout is fitted at the cohort's own prevalence, so its probabilities need no
correction (:func:`correct_prior` remains for runs without the readout; AUC is unchanged).

Optimiser: Adam, learning rate from the profile (1e-3), halved when the tune loss has not
improved for ``plateau_patience`` epochs (ReduceLROnPlateau semantics, but its state lives in
the checkpoint). The authors used SGD, lr 1e-2, momentum 0.9, halved on plateau:
``TrainConfig.authors()``. Adam converges in the few epochs a CPU budget allows; SGD at 1e-2
needs many more. Checkpoint selection monitors ``tune_loss`` (the weighted training loss on the
tune subset: smoother than the AUC of a few dozen patients, and it covers both tasks).

Devices: mixed precision (``mixed_bfloat16``) and XLA when a GPU is present, float32 on CPU
(where Keras' ``jit_compile="auto"`` keeps XLA off: its CPU 3-D convolutions are slow).
With the TensorFlow backend and several GPUs, a ``tf.distribute.MirroredStrategy`` (the
profile's batch size is then per replica). Multi-worker: set ``TF_CONFIG`` on every worker
(``{"cluster": {"worker": ["host1:port", ...]}, "task": {"type": "worker", "index": i}}``)
and run the same code on each; :func:`setup_device` then uses
``MultiWorkerMirroredStrategy``. Give each worker its own :class:`TrainPaths` run folder
(worker 0, the chief, holds the checkpoints that matter). JAX and PyTorch: one device.

Budget (2 CPU cores): ``benchmarks/bench_training_budget.py`` splits one demo training into
steps x the bare step time, graph tracing, tune evaluation, checkpoints and the readout refit
(README, "Speed").

Checkpoints: after every epoch, atomically, ``epoch_NNN.keras`` (weights and optimiser state)
then ``state.json`` (epoch, best metric, schedule counters, dropout seed-generator states, CSV
log length). :func:`fit_variant` resumes from them and, with op determinism on, ends with the
same weights as an uninterrupted run on CPU.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import sys
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pandas as pd
from scipy import ndimage

from . import segmetrics
from .config import SEQUENCES, Profile, get_paths, get_profile
from .io import atomic_path, save_npz_atomic, write_atomic, write_json_atomic
from .model import (
    VARIANTS,
    build_rpnet,
    compile_rpnet,
    head_groups,
    head_vector_model,
    set_readout,
    variant_of,
)
from .preprocess import CACHE_ARRAYS, CacheError, load_cached
from .readout import Readout, fit_readout, make_folds
from .repro import derive_seed, set_seeds

ALL_VARIANTS: tuple[str, ...] = tuple(VARIANTS)
# The main model and the ablations that test the paper's claims (two time points, multi-task,
# the tumour-guided head) are trained with Profile.seeds replicas; the others once.
SEEDED_VARIANTS: tuple[str, ...] = ("full", "paper_head", "single_task", "pre_only", "post_only")
SUBSETS: tuple[str, ...] = ("fit", "tune")
PREDICTION_COLUMNS = ["model", "seed", "patient_id", "cohort", "centre", "pcr", "score",
                      "score_source",
                      "vol_pre_true_ml", "vol_post_true_ml", "vol_pre_pred_ml", "vol_post_pred_ml",
                      "dice_pre", "dice_post"]
STATE_FILE = "state.json"


# --------------------------------------------------------------------------- configuration
@dataclass(frozen=True)
class AugmentConfig:
    """Training augmentation (all ranges symmetric; ``enabled=False`` turns it off)."""

    enabled: bool = True
    flip_axes: tuple[int, ...] = (1, 2)  # in-plane (y, x) axes of (z, y, x)
    flip_prob: float = 0.5
    rotate_deg: float = 10.0  # about z
    scale: float = 0.10  # isotropic, 1 ± scale
    gamma: float = 0.25  # gamma in [1/(1+g), 1+g], log-uniform
    bias: float = 0.15  # max coefficient of the log bias polynomial
    noise_std: float = 0.05  # max noise sigma (units of the robust z-score)
    intensity_prob: float = 0.5  # probability of each intensity change, per exam and channel


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
    monitor: str = "tune_loss"
    monitor_mode: str = "min"
    early_stopping_patience: int | None = None
    pcr_fraction: float | None = 0.5  # None: natural class frequencies
    tune_fraction: float = 0.2
    loss_weights: Mapping[str, float] | None = None  # None: the model's (pcr 1, masks 0.2)
    dropout: float = 0.3
    comparison: str = "subtract"  # how joins compare post with pre (utils.model.build_rpnet)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    prior_correction: bool = True
    mixed_precision: bool | str = "auto"  # "auto": bf16 on GPU only
    deterministic: bool | None = None  # None: op determinism on CPU, off on GPU (XLA)
    tensorboard: bool = False
    workers: int = 1  # PyDataset threads
    seed: int = 0  # replica: 0 uses the profile seed; k > 0 derives new init/sampling seeds
    readout: bool = True  # stage 2: cross-validated logistic refit of the pcr unit
    pcr_gradient: bool = False  # let the pCR loss train the backbone (utils.model)

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


@dataclass(frozen=True)
class TrainPaths:
    """Where training reads and writes (defaults: :func:`utils.config.get_paths`)."""

    manifest: Path
    cache_dir: Path
    run_dir: Path
    results_dir: Path

    @classmethod
    def for_profile(cls, name: str) -> TrainPaths:
        p = get_paths(name)
        return cls(p.manifest, p.cache_dir, p.run_dir, p.results_dir)

    models_dir = property(lambda self: self.run_dir / "models")
    logs_dir = property(lambda self: self.run_dir / "logs")
    checkpoints_dir = property(lambda self: self.run_dir / "checkpoints")
    predicted_masks_dir = property(lambda self: self.run_dir / "predicted_masks")
    predictions_dir = property(lambda self: self.run_dir / "predictions")
    split_csv = property(lambda self: self.results_dir / "split.csv")
    folds_csv = property(lambda self: self.results_dir / "folds.csv")
    readout_dir = property(lambda self: self.run_dir / "readout")
    predictions_csv = property(lambda self: self.results_dir / "predictions.csv")

    def log_csv(self, variant: str) -> Path:
        return self.logs_dir / variant / "training.csv"


def _profile(profile: Profile | str | None) -> Profile:
    return profile if isinstance(profile, Profile) else get_profile(profile)


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
        from .distribute import patch_keras_for_multi_worker

        patch_keras_for_multi_worker()
    if kind not in _STRATEGIES:
        _STRATEGIES[kind] = (tf.distribute.MultiWorkerMirroredStrategy() if kind == "multi_worker"
                             else tf.distribute.MirroredStrategy())
    return _STRATEGIES[kind]


def setup_device(mixed_precision: bool | str = "auto", multi_gpu: bool = True) -> DeviceSetup:
    """Pick precision and strategy: bf16 + XLA on GPU, float32 on CPU; mirrored over GPUs.

    Sets the global Keras dtype policy. The model's sigmoid outputs are float32 in any policy
    (utils.model builds them with ``dtype="float32"``).
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


# --------------------------------------------------------------------------- data
@dataclass(frozen=True)
class PatientArrays:
    """One patient's cached ROI crops (docs/CONTRACTS.md)."""

    patient_id: str
    cohort: str
    centre: str
    pcr: int
    image_pre: np.ndarray  # float32 (z, y, x, C)
    image_post: np.ndarray
    mask_pre: np.ndarray  # uint8 (z, y, x)
    mask_post: np.ndarray
    spacing_zyx: np.ndarray  # float64 (3,)
    preprocessing: dict[str, Any] = field(default_factory=dict)  # the cache's params

    @property
    def sequences(self) -> tuple[str, ...]:
        """The input channels, in order (older caches: the phantom's T2W, DWI)."""
        return tuple(self.preprocessing.get("sequences", SEQUENCES))

    def image(self, timepoint: str) -> np.ndarray:
        return self.image_pre if timepoint == "pre" else self.image_post

    def mask(self, timepoint: str) -> np.ndarray:
        return self.mask_pre if timepoint == "pre" else self.mask_post


def read_cache_file(path: Path, row: Mapping[str, Any]) -> PatientArrays:
    """Load and check one cached patient; errors name the patient and the file."""
    pid = str(row["patient_id"])
    arrays = load_cached(path)
    missing = [k for k in CACHE_ARRAYS if k not in arrays]
    if missing:
        raise CacheError(f"patient {pid}: cache file {path} lacks {missing}; rerun "
                         "preprocessing to recompute it")
    shape = arrays["image_pre"].shape
    if (arrays["image_post"].shape != shape or len(shape) != 4
            or arrays["mask_pre"].shape != shape[:3] or arrays["mask_post"].shape != shape[:3]):
        raise ValueError(f"patient {pid}: cache file {path} has inconsistent shapes "
                         f"{ {k: v.shape for k, v in arrays.items()} }")
    return PatientArrays(pid, str(row["cohort"]), str(row["centre"]), int(row["pcr"]),
                         arrays["image_pre"].astype(np.float32),
                         arrays["image_post"].astype(np.float32),
                         (arrays["mask_pre"] > 0).astype(np.uint8),
                         (arrays["mask_post"] > 0).astype(np.uint8),
                         arrays["spacing_zyx"].astype(np.float64),
                         arrays["meta"].get("params", {}))


def processed_ok(cache_dir: Path) -> set[str] | None:
    """Patients that ``processed.csv`` marks ``ok`` (None when the table is absent)."""
    table_path = cache_dir / "processed.csv"
    if not table_path.exists():
        return None
    table = pd.read_csv(table_path, dtype={"patient_id": str})
    return set(table.loc[table["status"] == "ok", "patient_id"])


def load_patients(cache_dir: Path, patients: pd.DataFrame
                  ) -> tuple[dict[str, PatientArrays], dict[str, str]]:
    """Cached arrays of every patient in ``patients`` whose preprocessing succeeded.

    Returns ``(arrays by patient id, {skipped patient id: reason})``.
    """
    ok = processed_ok(cache_dir)
    loaded, skipped = {}, {}
    for row in patients.to_dict("records"):
        pid = str(row["patient_id"])
        path = cache_dir / f"{pid}.npz"
        if ok is not None and pid not in ok:
            skipped[pid] = f"preprocessing failed (see {cache_dir / 'processed.csv'})"
        elif not path.exists():
            skipped[pid] = f"no cache file {path}"
        else:
            loaded[pid] = read_cache_file(path, row)
    return loaded, skipped


def make_split(patients: pd.DataFrame, tune_fraction: float = 0.2, seed: int = 2021
               ) -> pd.DataFrame:
    """Patient-level fit/tune split of the TRAINING cohort only, stratified by pCR.

    Within each pCR stratum patients are ordered by a hash of (seed, patient id) and the first
    ``round(n * tune_fraction)`` go to ``tune`` (at least one when the stratum has two or more
    patients). Validation cohorts never appear. Returns ``patient_id, subset``.
    """
    train = patients[patients["cohort"] == "training"]
    if train.empty:
        raise ValueError("the patient table has no training-cohort patient to split")
    rows = []
    for _, group in train.groupby("pcr", sort=True):
        ids = sorted(map(str, group["patient_id"]), key=lambda p: derive_seed(seed, "split", p))
        n_tune = round(len(ids) * tune_fraction)
        n_tune = max(n_tune, 1) if len(ids) >= 2 and tune_fraction > 0 else n_tune
        rows += [(pid, "tune" if i < n_tune else "fit") for i, pid in enumerate(ids)]
    split = pd.DataFrame(rows, columns=["patient_id", "subset"])
    return split.sort_values("patient_id").reset_index(drop=True)


def save_split(split: pd.DataFrame, path: Path) -> Path:
    return write_atomic(path, lambda tmp: split.to_csv(tmp, index=False))


@dataclass
class TrainData:
    """Everything a run needs about its patients: table, split and cached arrays."""

    patients: pd.DataFrame  # patient_table + subset column (fit/tune/NaN)
    arrays: dict[str, PatientArrays]
    skipped: dict[str, str]

    def ids(self, subset: str | None = None, cohort: str | None = None) -> list[str]:
        """Loaded patients of a subset (fit/tune) or a cohort, sorted."""
        table = self.patients
        if subset is not None:
            table = table[table["subset"] == subset]
        if cohort is not None:
            table = table[table["cohort"] == cohort]
        return sorted(p for p in table["patient_id"] if p in self.arrays)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return next(iter(self.arrays.values())).image_pre.shape

    @property
    def preprocessing(self) -> dict[str, Any]:
        """The preprocessing parameters every cached patient shares (grid, ROI, sequences).

        Raises ValueError naming two patients whose caches disagree (e.g. a cache folder
        mixing runs with different sequences or ROI sizes)."""
        keys = ("sequences", "reference_sequence", "spacing_zyx", "roi_zyx")
        items = sorted(self.arrays.items())
        first_id, first = items[0]
        for pid, patient in items[1:]:
            for key in keys:
                if patient.preprocessing.get(key) != first.preprocessing.get(key):
                    raise ValueError(
                        f"cached patients {first_id} and {pid} differ in {key}: "
                        f"{first.preprocessing.get(key)} vs {patient.preprocessing.get(key)}; "
                        "preprocess the cohort again with one setting")
        return first.preprocessing

    @property
    def sequences(self) -> tuple[str, ...]:
        return tuple(self.preprocessing.get("sequences", SEQUENCES))


def prepare_data(profile: Profile | str | None = None, paths: TrainPaths | None = None,
                 tune_fraction: float = 0.2) -> TrainData:
    """Manifest -> patient table, split (saved to ``results/split.csv``), cached arrays."""
    from .manifest import load_manifest, patient_table

    prof = _profile(profile)
    paths = paths or TrainPaths.for_profile(prof.name)
    patients = patient_table(load_manifest(paths.manifest))
    patients["patient_id"] = patients["patient_id"].astype(str)
    split = make_split(patients, tune_fraction, prof.seed)
    save_split(split, paths.split_csv)
    folds = make_folds(patients[patients["cohort"] == "training"], seed=prof.seed)
    write_atomic(paths.folds_csv, lambda tmp: folds.to_csv(tmp, index=False))
    patients = patients.merge(split, on="patient_id", how="left").merge(
        folds, on="patient_id", how="left")
    arrays, skipped = load_patients(paths.cache_dir, patients)
    if not arrays:
        raise FileNotFoundError(f"no cached patient in {paths.cache_dir}; run "
                                "python -m utils.preprocess first (notebook 01)")
    return TrainData(patients, arrays, skipped)


def check_no_leak(data: TrainData, ids: Iterable[str]) -> None:
    """Raise if any of ``ids`` is not a training-cohort patient."""
    cohort = data.patients.set_index("patient_id")["cohort"]
    bad = sorted(p for p in set(ids) if cohort.get(p) != "training")
    if bad:
        raise ValueError(f"validation-cohort patients would reach training or model selection: "
                         f"{bad[:10]}")


# --------------------------------------------------------------------------- augmentation
def _rng(seed: int, *keys: object) -> np.random.Generator:
    return np.random.default_rng(derive_seed(seed, *keys))


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The augmentation generator of one sample: a function of (seed, epoch, index) only."""
    return _rng(seed, "augment", epoch, index)


def spatial_params(rng: np.random.Generator, cfg: AugmentConfig) -> dict[str, Any]:
    """Draw one spatial transform: rotation angle (deg), scale and flipped axes."""
    return {"angle": float(rng.uniform(-cfg.rotate_deg, cfg.rotate_deg)),
            "scale": float(rng.uniform(1 - cfg.scale, 1 + cfg.scale)),
            "flips": tuple(a for a in cfg.flip_axes if rng.random() < cfg.flip_prob)}


def affine_matrix(angle_deg: float, scale: float, spacing_zyx: Sequence[float]) -> np.ndarray:
    """Voxel-space matrix mapping output to input coordinates (rotation about z in mm)."""
    a = math.radians(angle_deg)
    rot = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    d = np.diag(np.asarray(spacing_zyx, float))
    return np.linalg.inv(d) @ (rot / scale) @ d


def _warp(volume: np.ndarray, matrix: np.ndarray, order: int) -> np.ndarray:
    centre = (np.asarray(volume.shape[:3], float) - 1) / 2
    offset = centre - matrix @ centre
    if volume.ndim == 3:
        mode = "constant" if order == 0 else "nearest"
        return ndimage.affine_transform(volume, matrix, offset, order=order, mode=mode, cval=0)
    return np.stack([_warp(volume[..., c], matrix, order) for c in range(volume.shape[-1])], -1)


def apply_spatial(images: Sequence[np.ndarray], masks: Sequence[np.ndarray],
                  params: Mapping[str, Any], spacing_zyx: Sequence[float]
                  ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The same rotation, scaling and flips for every image (order 1) and mask (order 0)."""
    matrix = affine_matrix(params["angle"], params["scale"], spacing_zyx)
    out_img = [_warp(v, matrix, 1).astype(np.float32) for v in images]
    out_msk = [_warp(m, matrix, 0).astype(np.uint8) for m in masks]
    for axis in params["flips"]:
        out_img = [np.flip(v, axis) for v in out_img]
        out_msk = [np.flip(m, axis) for m in out_msk]
    return [np.ascontiguousarray(v) for v in out_img], [np.ascontiguousarray(m) for m in out_msk]


def _bias_field(rng: np.random.Generator, shape: Sequence[int], amplitude: float) -> np.ndarray:
    """exp of a random second-order polynomial on [-1, 1]^3 (smooth multiplicative field)."""
    axes = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    coeffs = rng.uniform(-amplitude, amplitude, size=6)
    z, y, x = axes
    log = (coeffs[0] * z + coeffs[1] * y + coeffs[2] * x + coeffs[3] * y * y
           + coeffs[4] * x * x + coeffs[5] * x * y)
    return np.exp(log)


def augment_intensity(image: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig
                      ) -> np.ndarray:
    """Gamma, bias field and noise, each with ``intensity_prob`` per channel of one exam."""
    out = image.astype(np.float32, copy=True)
    for c in range(out.shape[-1]):
        channel = out[..., c]
        lo, hi = float(channel.min()), float(channel.max())
        if rng.random() < cfg.intensity_prob and hi > lo:
            gamma = math.exp(rng.uniform(-math.log1p(cfg.gamma), math.log1p(cfg.gamma)))
            channel[...] = ((channel - lo) / (hi - lo)) ** gamma * (hi - lo) + lo
        if rng.random() < cfg.intensity_prob:
            channel[...] = (channel - lo) * _bias_field(rng, channel.shape, cfg.bias) + lo
        if rng.random() < cfg.intensity_prob:
            sigma = rng.uniform(0, cfg.noise_std)
            channel += rng.normal(0, sigma, channel.shape).astype(np.float32)
    return out


def augment_patient(p: PatientArrays, rng: np.random.Generator, cfg: AugmentConfig
                    ) -> dict[str, np.ndarray]:
    """Augmented ``image_pre, image_post, mask_pre, mask_post`` of one patient."""
    params = spatial_params(rng, cfg)
    (pre, post), (m_pre, m_post) = apply_spatial(
        [p.image_pre, p.image_post], [p.mask_pre, p.mask_post], params, p.spacing_zyx)
    return {"image_pre": augment_intensity(pre, rng, cfg),
            "image_post": augment_intensity(post, rng, cfg),
            "mask_pre": m_pre, "mask_post": m_post}


# --------------------------------------------------------------------------- sampling
def balanced_epoch(ids: Sequence[str], labels: Mapping[str, int], pcr_fraction: float | None,
                   rng: np.random.Generator) -> list[str]:
    """One shuffled epoch: every patient once, pCR patients repeated to ``pcr_fraction``.

    With ``n_neg`` non-responders the epoch holds ``round(f * n_neg / (1 - f))`` pCR samples
    (each pCR patient ``k`` or ``k + 1`` times). ``None`` (or a single class): no resampling.
    """
    pos = [p for p in ids if labels[p] == 1]
    neg = [p for p in ids if labels[p] != 1]
    items = list(ids)
    if pcr_fraction is not None and pos and neg:
        n_pos = max(1, round(pcr_fraction * len(neg) / (1 - pcr_fraction)))
        reps, extra = divmod(n_pos, len(pos))
        items = neg + pos * reps + list(rng.choice(pos, extra, replace=False))
    return [items[i] for i in rng.permutation(len(items))]


def epoch_fraction(ids: Sequence[str], labels: Mapping[str, int], pcr_fraction: float | None
                   ) -> float:
    """Expected fraction of pCR samples in a training epoch."""
    pos = sum(labels[p] == 1 for p in ids)
    if pcr_fraction is None or pos == 0 or pos == len(ids):
        return pos / max(len(ids), 1)
    n_pos = max(1, round(pcr_fraction * (len(ids) - pos) / (1 - pcr_fraction)))
    return n_pos / (n_pos + len(ids) - pos)


def correct_prior(p: np.ndarray, train_fraction: float, prevalence: float) -> np.ndarray:
    """Undo the prior shift of balanced sampling: odds x (prevalence odds / training odds)."""
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-7, 1 - 1e-7)
    if not 0 < train_fraction < 1 or not 0 < prevalence < 1:
        return p
    ratio = (prevalence / (1 - prevalence)) / (train_fraction / (1 - train_fraction))
    odds = p / (1 - p) * ratio
    return odds / (1 + odds)


# --------------------------------------------------------------------------- dataset
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
    ``(seed, epoch, batch index)``; the epoch counter is :attr:`epoch` (set it before an epoch;
    :meth:`on_epoch_end` advances it). Epoch length is a whole number of batches:
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
                               _rng(self.seed, "order", epoch, 0))
        n_batches = self.steps_per_epoch or math.ceil(len(first) / self.batch_size)
        order, rounds = list(first), 1
        while len(order) < n_batches * self.batch_size:
            order += balanced_epoch(self.ids, self._labels, self.pcr_fraction,
                                    _rng(self.seed, "order", epoch, rounds))
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


def stacked_inputs(data: TrainData, ids: Sequence[str], variant: str
                   ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """All of ``ids`` as one unaugmented batch (x, y) for a variant."""
    spec = VARIANTS[variant]
    arrays = [data.arrays[p] for p in ids]
    x = {tp: np.stack([a.image(tp) for a in arrays]) for tp in spec.inputs}
    masks = [{"mask_pre": a.mask_pre, "mask_post": a.mask_post} for a in arrays]
    return x, _targets(masks, [a.pcr for a in arrays], spec.outputs)


def predict_arrays(model: keras.Model, x: Mapping[str, np.ndarray], batch_size: int
                   ) -> dict[str, np.ndarray]:
    """``model.predict`` padded to whole batches (one traced shape), as float32 NumPy."""
    n = len(next(iter(x.values())))
    pad = (-n) % batch_size
    padded = {k: np.concatenate([v, np.repeat(v[-1:], pad, 0)]) if pad else v
              for k, v in x.items()}
    out = model.predict(padded, batch_size=batch_size, verbose=0)
    return {k: np.asarray(v, dtype=np.float32)[:n] for k, v in out.items()}


# --------------------------------------------------------------------------- tune metrics
def _bce(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    p = np.clip(p.astype(np.float64), 1e-7, 1 - 1e-7)
    return -(y * np.log(p) + (1 - y) * np.log(1 - p))


def _auc(y: np.ndarray, p: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y).ravel()
    return float(roc_auc_score(y, np.asarray(p).ravel())) if len(np.unique(y)) == 2 else np.nan


def hard_dice(true: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Per-sample Dice of masks thresholded at 0.5 (both empty: 1)."""
    t = true.reshape(len(true), -1) > 0.5
    q = pred.reshape(len(pred), -1) > 0.5
    inter, size = (t & q).sum(1), t.sum(1) + q.sum(1)
    return np.where(size == 0, 1.0, 2 * inter / np.maximum(size, 1))


def evaluate_predictions(y: Mapping[str, np.ndarray], pred: Mapping[str, np.ndarray],
                         loss_weights: Mapping[str, float], prefix: str = "tune_"
                         ) -> dict[str, float]:
    """Losses (as compiled: Dice+BCE per mask, BCE on pcr), Dice and AUC, in NumPy."""
    out: dict[str, float] = {}
    total = 0.0
    for name in y:
        t, p = y[name], pred[name]
        if name == "pcr":
            loss = float(_bce(t, p).mean())
            out[f"{prefix}pcr_auc"] = _auc(t, p)
        else:
            flat_t, flat_p = t.reshape(len(t), -1), p.reshape(len(p), -1).astype(np.float64)
            soft = 1 - (2 * (flat_t * flat_p).sum(1) + 1) / (flat_t.sum(1) + flat_p.sum(1) + 1)
            loss = float((soft + _bce(flat_t, flat_p).mean(1)).mean())
            out[f"{prefix}{name}_dice"] = float(hard_dice(t, p).mean())
        out[f"{prefix}{name}_loss"] = loss
        total += loss_weights[name] * loss
    out[f"{prefix}loss"] = total
    return out


class TuneEvaluation(keras.callbacks.Callback):
    """Adds ``tune_*`` metrics (tune subset) and ``lr`` to the epoch logs."""

    def __init__(self, x: Mapping[str, np.ndarray], y: Mapping[str, np.ndarray],
                 loss_weights: Mapping[str, float], batch_size: int) -> None:
        super().__init__()
        self.x, self.y, self.loss_weights, self.batch_size = x, y, loss_weights, batch_size

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if logs is None:
            return
        pred = predict_arrays(self.model, self.x, self.batch_size)
        logs.update(evaluate_predictions(self.y, pred, self.loss_weights))
        logs["lr"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))


class _CSVLogger(keras.callbacks.CSVLogger):
    """Keras' CSVLogger without its empty ``val_*`` columns (we log ``tune_*`` instead)."""

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if self.keys is None and logs:
            self.keys = sorted(logs)
        super().on_epoch_end(epoch, logs)


# --------------------------------------------------------------------------- run state
@dataclass
class RunState:
    """What a resumed run needs besides the weights (saved as ``state.json``)."""

    epoch: int = 0  # completed epochs
    learning_rate: float = 0.0
    best_metric: float | None = None
    best_epoch: int = -1
    plateau_best: float | None = None
    plateau_wait: int = 0
    stop_wait: int = 0
    stopped_early: bool = False
    done: bool = False
    checkpoint: str = ""
    log_lines: int = 0
    seed_states: list = field(default_factory=list)
    seconds: float = 0.0

    @classmethod
    def load(cls, path: Path) -> RunState | None:
        if not path.exists():
            return None
        return cls(**json.loads(path.read_text()))


def seed_generator_states(model: keras.Model) -> list[list[int]]:
    """Dropout seed-generator states, in variable order (``.keras`` files omit them)."""
    return [keras.ops.convert_to_numpy(v).astype(np.int64).tolist() for v in model.variables
            if "seed_generator_state" in v.path]


def restore_seed_generator_states(model: keras.Model, states: Sequence[Sequence[int]]) -> None:
    variables = [v for v in model.variables if "seed_generator_state" in v.path]
    if len(variables) != len(states):
        raise ValueError(f"checkpoint has {len(states)} seed-generator states, model "
                         f"{len(variables)}: was the model definition changed?")
    for var, value in zip(variables, states, strict=True):
        var.assign(np.asarray(value, dtype=var.dtype))


def _improved(value: float, best: float | None, mode: str) -> bool:
    if value is None or not np.isfinite(value):
        return False
    return best is None or (value < best if mode == "min" else value > best)


def next_learning_rate(state: RunState, cfg: TrainConfig, epoch: int) -> float:
    """Learning rate for ``epoch`` (0-based): constant, cosine, or the plateau state's."""
    if cfg.schedule == "cosine":
        cos = 0.5 * (1 + math.cos(math.pi * epoch / max(cfg.epochs, 1)))
        return max(cfg.min_learning_rate, cfg.learning_rate * cos)
    if cfg.schedule in ("plateau", "constant"):
        return state.learning_rate or cfg.learning_rate
    raise ValueError(f"unknown schedule {cfg.schedule!r}; choose plateau, cosine or constant")


def update_state(state: RunState, cfg: TrainConfig, logs: Mapping[str, float]) -> bool:
    """Best metric, plateau halving and early stopping after one epoch; True if improved."""
    value = logs.get(cfg.monitor)
    if value is None:
        raise KeyError(f"monitored metric {cfg.monitor!r} not in the logs {sorted(logs)}")
    improved = _improved(value, state.best_metric, cfg.monitor_mode)
    if improved:
        state.best_metric, state.best_epoch, state.stop_wait = float(value), state.epoch, 0
    else:
        state.stop_wait += 1
    if cfg.schedule == "plateau":
        if _improved(value, state.plateau_best, cfg.monitor_mode):
            state.plateau_best, state.plateau_wait = float(value), 0
        else:
            state.plateau_wait += 1
            if state.plateau_wait >= cfg.plateau_patience:
                state.learning_rate = max(cfg.min_learning_rate,
                                          state.learning_rate * cfg.plateau_factor)
                state.plateau_wait = 0
    patience = cfg.early_stopping_patience
    state.stopped_early = patience is not None and state.stop_wait >= patience
    state.epoch += 1
    return improved


def _count_lines(path: Path) -> int:
    if not path.exists():
        return 0
    with open(path, "rb") as handle:
        return sum(1 for _ in handle)


def truncate_log(path: Path, lines: int) -> None:
    """Keep the first ``lines`` lines of a CSV log (drop rows of epochs not checkpointed)."""
    if not path.exists():
        return
    kept = path.read_text().splitlines(keepends=True)[:lines]
    write_atomic(path, lambda tmp: tmp.write_text("".join(kept)))


# --------------------------------------------------------------------------- fit
@dataclass
class FitResult:
    """Outcome of :func:`fit_variant`."""

    variant: str
    model_path: Path
    log_path: Path
    best_epoch: int
    best_metric: float | None
    epochs_run: int
    seconds: float
    interrupted: bool = False
    skipped: bool = False  # already complete, nothing trained
    model: keras.Model | None = field(default=None, repr=False)  # best weights, in memory


def _build_compiled(variant: str, profile: Profile, cfg: TrainConfig, shape: Sequence[int],
                    device: DeviceSetup) -> keras.Model:
    with device.scope():
        model = build_rpnet(tuple(shape), variant, depth=profile.depth,
                            base_filters=profile.base_filters, dropout=cfg.dropout,
                            comparison=cfg.comparison, seed=replica_seed(profile, cfg.seed),
                            pcr_gradient=cfg.pcr_gradient,
                            sync_batchnorm=device.strategy is not None)
        compile_rpnet(model, variant, cfg.learning_rate, loss_weights=cfg.loss_weights,
                      optimizer=cfg.optimizer, jit_compile=device.jit_compile)
    return model


def resolved_loss_weights(variant: str, cfg: TrainConfig) -> dict[str, float]:
    """The compiled loss weight of each output of a variant."""
    from .model import DEFAULT_LOSS_WEIGHTS

    weights = {**DEFAULT_LOSS_WEIGHTS, **(cfg.loss_weights or {})}
    return {name: weights[name] for name in VARIANTS[variant].outputs}


def _restore(model: keras.Model, ckpt_dir: Path, state: RunState) -> None:
    path = ckpt_dir / state.checkpoint
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} named in {ckpt_dir / STATE_FILE} is "
                                "missing; delete the folder to restart this variant")
    model.optimizer.build(model.trainable_variables)
    model.load_weights(path)
    restore_seed_generator_states(model, state.seed_states)


def _save_checkpoint(model: keras.Model, ckpt_dir: Path, state: RunState, improved: bool,
                     log_path: Path) -> None:
    """Epoch model, best model, then state.json (the commit), then prune older epochs."""
    name = f"epoch_{state.epoch:03d}.keras"
    with atomic_path(ckpt_dir / name) as tmp:
        model.save(tmp)
    if improved:
        write_atomic(ckpt_dir / "best.keras",
                     lambda tmp: shutil.copyfile(ckpt_dir / name, tmp))
    state.checkpoint = name
    state.log_lines = _count_lines(log_path)
    state.seed_states = seed_generator_states(model)
    write_json_atomic(ckpt_dir / STATE_FILE, asdict(state))
    for old in ckpt_dir.glob("epoch_*.keras"):
        if old.name != name:
            old.unlink(missing_ok=True)


def _callbacks(tune: TuneEvaluation, log_path: Path, cfg: TrainConfig, variant: str,
               paths: TrainPaths) -> list[keras.callbacks.Callback]:
    callbacks: list[keras.callbacks.Callback] = [tune, _CSVLogger(str(log_path), append=True)]
    if cfg.tensorboard and keras.backend.backend() == "tensorflow":
        try:
            callbacks.append(keras.callbacks.TensorBoard(str(paths.logs_dir / variant / "tb")))
        except ImportError as error:  # tensorboard not installed
            print(f"TensorBoard logging off: {error}", file=sys.stderr)
    return callbacks


def _reset_run(ckpt_dir: Path, log_path: Path) -> None:
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    log_path.unlink(missing_ok=True)


def replica_seed(profile: Profile, replica: int = 0) -> int:
    """Seed of one training replica: the profile's seed for replica 0, derived otherwise."""
    return profile.seed if replica == 0 else derive_seed(profile.seed, "replica", replica)


def run_name(variant: str, replica: int = 0) -> str:
    """File stem of one trained replica: ``full``, ``full_seed1``, ..."""
    return variant if replica == 0 else f"{variant}_seed{replica}"


def _run_seed(profile: Profile, replica: int = 0) -> int:
    """Sampling and augmentation seed: the same for every variant (a controlled ablation)."""
    return derive_seed(replica_seed(profile, replica), "train")


def fit_variant(variant: str, data: TrainData, profile: Profile | str | None = None,
                config: TrainConfig | None = None, paths: TrainPaths | None = None, *,
                resume: bool = True, progress: Any = None, stop_after: int | None = None
                ) -> FitResult:
    """Train one variant on the fit subset, selecting epochs on the tune subset.

    Resumes from ``runs/<profile>/checkpoints/<variant>/`` when a checkpoint exists
    (``resume=False`` starts over). ``stop_after`` ends this call after that many epochs,
    leaving the checkpoint as an interruption would (for tests and time-sliced runs).
    ``progress`` is an optional tqdm bar (updated once per epoch). The best model is written
    to ``runs/<profile>/models/<variant>.keras`` when the run completes.
    """
    prof = _profile(profile)
    cfg = (config or TrainConfig()).resolved(prof)
    paths = paths or TrainPaths.for_profile(prof.name)
    run = run_name(variant, cfg.seed)
    ckpt_dir, log_path = paths.checkpoints_dir / run, paths.log_csv(run)
    model_path = paths.models_dir / f"{run}.keras"
    if not resume:
        _reset_run(ckpt_dir, log_path)
    state = RunState.load(ckpt_dir / STATE_FILE) or RunState(learning_rate=cfg.learning_rate)
    if state.done and model_path.exists():
        return FitResult(variant, model_path, log_path, state.best_epoch, state.best_metric,
                         0, state.seconds, skipped=True)
    fit_ids, tune_ids = data.ids("fit"), data.ids("tune")
    check_no_leak(data, fit_ids + tune_ids)
    deterministic = cfg.deterministic if cfg.deterministic is not None else not gpu_names()
    device = setup_device(cfg.mixed_precision)  # first: a strategy configures TF at start-up
    set_seeds(prof.seed, deterministic=deterministic)
    model = _build_compiled(variant, prof, cfg, data.input_shape, device)
    if state.checkpoint:
        _restore(model, ckpt_dir, state)
        truncate_log(log_path, state.log_lines)
    train = RPNetDataset(data.arrays, fit_ids, variant, cfg.batch_size * device.replicas,
                         training=True, seed=_run_seed(prof, cfg.seed), augment=cfg.augment,
                         pcr_fraction=cfg.pcr_fraction, steps_per_epoch=cfg.steps_per_epoch,
                         workers=cfg.workers)
    x_tune, y_tune = stacked_inputs(data, tune_ids, variant)
    tune = TuneEvaluation(x_tune, y_tune, resolved_loss_weights(variant, cfg), cfg.batch_size)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    callbacks = _callbacks(tune, log_path, cfg, variant, paths)
    start, epochs_run = time.perf_counter(), 0
    while state.epoch < cfg.epochs and not state.stopped_early:
        if stop_after is not None and epochs_run >= stop_after:
            break
        logs = _train_epoch(model, train, callbacks, state, cfg)
        improved = update_state(state, cfg, logs)
        state.seconds += time.perf_counter() - start
        start = time.perf_counter()
        _save_checkpoint(model, ckpt_dir, state, improved, log_path)
        epochs_run += 1
        if progress is not None:
            progress.update(1)
            progress.set_postfix_str(_postfix(logs, cfg.monitor), refresh=False)
    interrupted = state.epoch < cfg.epochs and not state.stopped_early
    if not interrupted:
        model.load_weights(ckpt_dir / "best.keras")  # best epoch; keeps the traced functions
        readout = refit_readout(model, data, cfg) if cfg.readout else None
        _finish(variant, model, ckpt_dir, state, model_path, prof, data, cfg, readout, paths)
    return FitResult(variant, model_path, log_path, state.best_epoch, state.best_metric,
                     epochs_run, state.seconds, interrupted=interrupted,
                     model=None if interrupted else model)


def _train_epoch(model: keras.Model, train: RPNetDataset, callbacks: list, state: RunState,
                 cfg: TrainConfig) -> dict[str, float]:
    lr = next_learning_rate(state, cfg, state.epoch)
    state.learning_rate = lr
    model.optimizer.learning_rate = lr
    train.epoch = state.epoch
    history = model.fit(train, initial_epoch=state.epoch, epochs=state.epoch + 1,
                        callbacks=callbacks, verbose=0)
    return {k: float(v[-1]) for k, v in history.history.items()}


def _postfix(logs: Mapping[str, float], monitor: str) -> str:
    keys = [monitor, "tune_pcr_auc", "tune_mask_pre_dice", "tune_mask_post_dice"]
    short = {"tune_loss": "loss", "tune_pcr_auc": "auc", "tune_mask_pre_dice": "dice_pre",
             "tune_mask_post_dice": "dice_post"}
    return " ".join(f"{short.get(k, k)}={logs[k]:.3f}" for k in dict.fromkeys(keys) if k in logs)


def _finish(variant: str, model: keras.Model, ckpt_dir: Path, state: RunState,
            model_path: Path, profile: Profile, data: TrainData, cfg: TrainConfig,
            readout: Readout | None, paths: TrainPaths) -> None:
    """Save the selected model (with its refitted readout) and its card; mark the run done."""
    with atomic_path(model_path) as tmp:
        model.save(tmp)
    card = model_card(variant, profile, data, cfg, state, readout)
    write_json_atomic(model_path.with_suffix(".json"), card)
    if readout is not None:
        ids = data.ids(cohort="training")
        oof = pd.DataFrame({"patient_id": ids, "oof_score": readout.oof})
        target = paths.readout_dir / f"{model_path.stem}.csv"
        write_atomic(target, lambda tmp: oof.to_csv(tmp, index=False))
    state.done = True
    write_json_atomic(ckpt_dir / STATE_FILE, asdict(state))


def head_vectors(model: keras.Model, data: TrainData, ids: Sequence[str], variant: str,
                 batch_size: int = 8) -> np.ndarray:
    """The head vector (input of the final pcr unit) of each patient, unaugmented."""
    x, _ = stacked_inputs(data, ids, variant)
    features = head_vector_model(model).predict(x, batch_size=batch_size, verbose=0)
    return np.asarray(features, dtype=np.float64)


def refit_readout(model: keras.Model, data: TrainData, cfg: TrainConfig) -> Readout:
    """Stage 2: cross-validated logistic refit of the pcr unit on every training patient
    (:mod:`utils.readout`); the fitted weights are written into ``model``."""
    ids = data.ids(cohort="training")
    check_no_leak(data, ids)
    table = data.patients.set_index("patient_id").loc[ids]
    readout = fit_readout(head_vectors(model, data, ids, variant_of(model), cfg.batch_size),
                          table["pcr"].to_numpy(int), table["fold"].to_numpy(int),
                          head_groups(model))
    set_readout(model, readout.coef, readout.intercept)
    return readout


def model_card(variant: str, profile: Profile, data: TrainData, cfg: TrainConfig,
               state: RunState, readout: Readout | None = None) -> dict[str, Any]:
    """What :mod:`utils.predict` needs next to a model: grid, ROI and the prior correction.

    A refitted readout is fitted at the training cohort's own prevalence, so it needs no
    prior correction."""
    fit_ids = data.ids("fit")
    labels = {p: data.arrays[p].pcr for p in fit_ids}
    return {"variant": variant, "seed": cfg.seed,
            "profile": profile.name,
            "spacing_zyx": list(data.preprocessing.get("spacing_zyx", profile.spacing_zyx)),
            "roi_zyx": list(data.input_shape[:3]), "sequences": list(data.sequences),
            "preprocessing": data.preprocessing,
            "train_pcr_fraction": epoch_fraction(fit_ids, labels, cfg.pcr_fraction),
            "prevalence": float(np.mean(list(labels.values()))),
            "prior_correction": cfg.prior_correction and readout is None,
            "readout": readout.card() if readout is not None else None,
            "best_epoch": state.best_epoch, "monitor": cfg.monitor,
            "best_metric": state.best_metric, "epochs": state.epoch,
            "config": _jsonable(asdict(cfg))}


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


def score_from_card(raw: np.ndarray, card: Mapping[str, Any] | None) -> np.ndarray:
    """The reported pCR probability: raw model output, prior-corrected if the card says so."""
    if not card or not card.get("prior_correction"):
        return np.asarray(raw, dtype=np.float64)
    return correct_prior(raw, card["train_pcr_fraction"], card["prevalence"])


def read_model_card(model_path: str | os.PathLike) -> dict[str, Any] | None:
    path = Path(model_path).with_suffix(".json")
    return json.loads(path.read_text()) if path.exists() else None


# --------------------------------------------------------------------------- predictions
def _volume(mask: np.ndarray, spacing: np.ndarray) -> float:
    return segmetrics.volume_ml(mask, spacing)


def _mask_columns(p: PatientArrays, pred: Mapping[str, np.ndarray], i: int
                  ) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    row: dict[str, float] = {}
    masks: dict[str, np.ndarray] = {}
    for tp in ("pre", "post"):
        true = p.mask(tp)
        row[f"vol_{tp}_true_ml"] = _volume(true, p.spacing_zyx)
        key = f"mask_{tp}"
        if key in pred:
            mask = (pred[key][i, ..., 0] >= 0.5).astype(np.uint8)
            masks[key] = mask
            row[f"vol_{tp}_pred_ml"] = _volume(mask, p.spacing_zyx)
            row[f"dice_{tp}"] = segmetrics.dice(mask, true)
        else:
            row[f"vol_{tp}_pred_ml"] = row[f"dice_{tp}"] = np.nan
    return row, masks


def out_of_fold_scores(paths: TrainPaths, run: str) -> dict[str, float]:
    """Training patients' out-of-fold readout scores of one run (empty without a readout)."""
    path = paths.readout_dir / f"{run}.csv"
    if not path.exists():
        return {}
    table = pd.read_csv(path, dtype={"patient_id": str})
    return dict(zip(table["patient_id"], table["oof_score"], strict=True))


def predict_variant(variant: str, model: keras.Model | Path, data: TrainData, paths: TrainPaths,
                    batch_size: int = 4, replica: int = 0) -> pd.DataFrame:
    """Predict every loaded patient (all cohorts) once with the selected model.

    ``model`` is the trained model in memory or a ``.keras`` path. Training-cohort patients
    get their out-of-fold readout score (:mod:`utils.readout`) when the run has one. Writes
    ``predicted_masks/<run>/<patient>.npz`` (the variant's masks only; none for
    single_task) and ``predictions/<run>.csv``; returns the rows of predictions.csv.
    """
    if not isinstance(model, keras.Model):
        model = keras.saving.load_model(model, compile=False, safe_mode=True)
    run = run_name(variant, replica)
    card = read_model_card(paths.models_dir / f"{run}.keras")
    ids = sorted(data.arrays)
    x, _ = stacked_inputs(data, ids, variant)
    pred = predict_arrays(model, x, batch_size)
    scores = score_from_card(pred["pcr"][:, 0], card)
    oof = out_of_fold_scores(paths, run)
    rows = []
    for i, pid in enumerate(ids):
        p = data.arrays[pid]
        cols, masks = _mask_columns(p, pred, i)
        rows.append({"model": variant, "seed": replica, "patient_id": pid, "cohort": p.cohort,
                     "centre": p.centre, "pcr": p.pcr,
                     "score": float(oof.get(pid, scores[i])),
                     "score_source": "out_of_fold" if pid in oof else "model", **cols})
        if masks:
            save_npz_atomic(paths.predicted_masks_dir / run / f"{pid}.npz", **masks,
                            spacing_zyx=p.spacing_zyx)
    table = pd.DataFrame(rows, columns=PREDICTION_COLUMNS)
    target = paths.predictions_dir / f"{run}.csv"
    write_atomic(target, lambda tmp: table.to_csv(tmp, index=False))
    return table


def write_predictions(paths: TrainPaths, runs: Sequence[str] | None = None) -> pd.DataFrame:
    """Combine per-run tables into ``results/predictions.csv`` (atomically).

    ``runs``: run names (:func:`run_name`) to include, in order; default every table in
    ``runs/<profile>/predictions/``.
    """
    if runs is None:
        runs = sorted(p.stem for p in paths.predictions_dir.glob("*.csv"))
    frames = [pd.read_csv(paths.predictions_dir / f"{r}.csv", dtype={"patient_id": str})
              for r in runs if (paths.predictions_dir / f"{r}.csv").exists()]
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=PREDICTION_COLUMNS)
    write_atomic(paths.predictions_csv, lambda tmp: table.to_csv(tmp, index=False))
    return table


# --------------------------------------------------------------------------- all variants
def _bar(total: int, desc: str, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, leave=True, ascii=True,
                mininterval=5.0, file=sys.stdout, dynamic_ncols=False, ncols=100)


def describe_run(data: TrainData, profile: Profile, cfg: TrainConfig) -> str:
    """Cohort sizes, split and training budget in one line."""
    sizes = ", ".join(f"{len(data.ids(cohort=c))} {c.split('_')[0]}" for c in
                      ("training", "internal_validation", "external_validation"))
    fit = data.ids("fit")
    probe = RPNetDataset(data.arrays, fit, "full", cfg.batch_size, training=True,
                         pcr_fraction=cfg.pcr_fraction, steps_per_epoch=cfg.steps_per_epoch)
    return (f"{profile.name}: {sizes} patients; fit {len(fit)}, tune {len(data.ids('tune'))}; "
            f"{cfg.epochs} epochs x {len(probe)} steps x batch {cfg.batch_size}"
            + (f"; skipped {len(data.skipped)}" if data.skipped else ""))


def train_all(profile: Profile | str | None = None, variants: Sequence[str] = ALL_VARIANTS,
              config: TrainConfig | None = None, paths: TrainPaths | None = None, *,
              seeds: int | Mapping[str, int] | None = None, resume: bool = True,
              progress: bool = True) -> pd.DataFrame:
    """Train the main model and every ablation with one split and one budget; predict all.

    ``seeds``: replicas per variant (an int for all, or a mapping variant -> count; absent
    variants get one); default: ``profile.seeds`` for :data:`SEEDED_VARIANTS`, one otherwise.
    Per run: one progress bar (one line) and one summary line. Writes
    ``models/<run>.keras``, ``logs/<run>/training.csv``, ``predicted_masks/``,
    ``results/split.csv``, ``results/folds.csv`` and ``results/predictions.csv`` (every run
    of this call, updated after each run); returns the predictions table.
    Completed runs are not retrained (``resume=False`` retrains everything).
    """
    prof = _profile(profile)
    cfg = (config or TrainConfig()).resolved(prof)
    paths = paths or TrainPaths.for_profile(prof.name)
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variants {unknown}; choose from {ALL_VARIANTS}")
    data = prepare_data(prof, paths, cfg.tune_fraction)
    print(describe_run(data, prof, cfg))
    if data.skipped:
        print(f"  skipped (no usable cache): {', '.join(sorted(data.skipped)[:12])}"
              + (" ..." if len(data.skipped) > 12 else ""))
    if seeds is None:
        seeds = dict.fromkeys(SEEDED_VARIANTS, prof.seeds)
    runs = []
    for variant in variants:
        count = seeds if isinstance(seeds, int) else seeds.get(variant, 1)
        for replica in range(count):
            _train_and_predict(variant, data, prof, replace(cfg, seed=replica), paths, resume,
                               progress)
            runs.append(run_name(variant, replica))
            write_predictions(paths, runs)  # after each run: partial results survive a crash
    return write_predictions(paths, runs)


def _train_and_predict(variant: str, data: TrainData, prof: Profile, cfg: TrainConfig,
                       paths: TrainPaths, resume: bool, progress: bool) -> None:
    start = time.perf_counter()
    run = run_name(variant, cfg.seed)
    with _bar(cfg.epochs, f"{run:>18}", progress) as bar:
        result = fit_variant(variant, data, prof, cfg, paths, resume=resume, progress=bar)
    table_path = paths.predictions_dir / f"{run}.csv"
    if not (result.skipped and table_path.exists()):
        table = predict_variant(variant, result.model or result.model_path, data, paths,
                                cfg.batch_size, cfg.seed)
    else:
        table = pd.read_csv(table_path, dtype={"patient_id": str})
    print(_summary(result, table, time.perf_counter() - start))


def _summary(result: FitResult, table: pd.DataFrame, seconds: float) -> str:
    parts = [f"{result.model_path.stem:>18}: best epoch {result.best_epoch + 1}"]
    for cohort in ("internal_validation", "external_validation"):
        rows = table[table["cohort"] == cohort]
        if len(rows) and rows["pcr"].nunique() == 2:
            parts.append(f"AUC {cohort.split('_')[0][:3]} {_auc(rows['pcr'], rows['score']):.3f}")
    val = table[table["cohort"] != "training"]
    if val["dice_pre"].notna().any():
        parts.append(f"Dice pre {val['dice_pre'].mean():.3f}")
    status = "cached" if result.skipped else f"{seconds:.0f} s"
    return ", ".join(parts) + f" ({status})"


# --------------------------------------------------------------------------- figures
def read_log(path: str | os.PathLike) -> pd.DataFrame:
    """A training log (one row per epoch)."""
    return pd.read_csv(path)


def plot_training_curves(log_paths: Mapping[str, str | os.PathLike] | Sequence[str | os.PathLike]):
    """Per epoch and run: loss (fit dotted, tune solid), pCR loss (fit dotted, tune solid),
    tune Dice (pre solid, post dashed) and tune AUC."""
    import matplotlib.pyplot as plt

    if not isinstance(log_paths, Mapping):
        log_paths = {Path(p).parent.name: p for p in log_paths}
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.4))
    for i, (name, path) in enumerate(log_paths.items()):
        log, color = read_log(path), f"C{i % 10}"
        epochs = log["epoch"] + 1
        for ax, key in ((axes[0], "loss"), (axes[1], "pcr_loss")):
            if key in log:
                ax.plot(epochs, log[key], color=color, alpha=0.6, linestyle=":")
            if f"tune_{key}" in log:
                ax.plot(epochs, log[f"tune_{key}"], color=color, label=name)
        for key, style in (("tune_mask_pre_dice", "-"), ("tune_mask_post_dice", "--")):
            if key in log:
                axes[2].plot(epochs, log[key], color=color, linestyle=style)
        if "tune_pcr_auc" in log:
            axes[3].plot(epochs, log["tune_pcr_auc"], color=color)
    titles = ["weighted loss (dotted: fit, solid: tune)", "pCR loss (dotted: fit, solid: tune)",
              "tune Dice (solid: pre, dashed: post)", "tune AUC (pCR, gradient-trained unit)"]
    for ax, title in zip(axes, titles, strict=True):
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("epoch")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def readout_table(models_dir: str | os.PathLike) -> pd.DataFrame:
    """One row per trained run: the readout's chosen feature set, penalty and out-of-fold
    AUC over the training cohort (from the model cards)."""
    rows = []
    for card_path in sorted(Path(models_dir).glob("*.json")):
        card = json.loads(card_path.read_text())
        readout = card.get("readout") or {}
        rows.append({"run": card_path.stem, "variant": card.get("variant"),
                     "seed": card.get("seed", 0), "best_epoch": card.get("best_epoch", -1) + 1,
                     "readout_features": readout.get("features"), "C": readout.get("C"),
                     "oof_auc": readout.get("oof_auc")})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- timing
def measure_step_time(profile: Profile | str | None = None, variant: str = "full",
                      batch_size: int | None = None, steps: int = 5) -> dict[str, float]:
    """Seconds per training step of a variant on random data (after one warm-up epoch)."""
    prof = _profile(profile)
    bs = batch_size or prof.batch_size
    device = setup_device("auto")
    shape = (*prof.roi_zyx, len(SEQUENCES))
    model = _build_compiled(variant, prof, TrainConfig().resolved(prof), shape, device)
    rng = np.random.default_rng(0)
    spec = VARIANTS[variant]
    x = {b: rng.normal(size=(bs * steps, *shape)).astype(np.float32) for b in spec.inputs}
    y = {k: (rng.random((bs * steps, *shape[:3], 1)) > 0.9).astype(np.float32)
         for k in spec.outputs if k != "pcr"}
    y["pcr"] = (np.arange(bs * steps) % 2).astype(np.float32)[:, None]
    t0 = time.perf_counter()
    model.fit(x, y, batch_size=bs, epochs=1, verbose=0, shuffle=False)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    model.fit(x, y, batch_size=bs, epochs=1, verbose=0, shuffle=False)
    step = (time.perf_counter() - t0) / steps
    return {"step_s": step, "first_epoch_s": first, "batch_size": bs,
            "samples_per_s": bs / step}
