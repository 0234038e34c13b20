"""Run profiles and paths: the one place that says how big each run is and where files go.

One environment variable, ``RPNET_PROFILE`` (``smoke``, ``demo`` or ``paper``; default
``demo``), selects the profile. All profiles run the same code paths; only cohort
sizes, resolution, network width and epochs differ.

Outputs of the default profile (``demo``) go to the committed ``figures/`` and
``results/`` folders; every other profile writes to ``runs/<profile>/`` so that a
smoke test never overwrites the committed figures.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PROFILE = "demo"
PROFILE_ENV = "RPNET_PROFILE"
MANIFEST_ENV = "RPNET_MANIFEST"
# set (make reproduce, make test): static figures and one-line progress bars in stored outputs
STATIC_ENV = "RPNET_STATIC_FIGURES"

# The phantom's sequences. A user's cohort brings its own (the manifest's ``sequence``
# column): any name matching SEQUENCE_NAME; one of them is the reference grid.
SEQUENCES: tuple[str, ...] = ("T2W", "DWI")
SEQUENCE_NAME = re.compile(r"[A-Za-z0-9_+-]+")
REFERENCE_SEQUENCE = "T2W"
TIMEPOINTS: tuple[str, ...] = ("pre", "post")
COHORTS: tuple[str, ...] = ("training", "internal_validation", "external_validation")
# training's class counts (utils.training.patients checks them; manifest check warns)
K_FOLDS = 5  # folds of the readout; its folds and tune split want this many per class
MIN_PER_CLASS = 1  # the readout's logistic fit needs both classes


@dataclass(frozen=True)
class Profile:
    """Everything that differs between the smoke, demo and paper runs."""

    name: str
    seed: int
    # cohort sizes (training, internal validation, external validation)
    n_training: int
    n_internal: int
    n_external: int
    # preprocessing: target voxel spacing (z, y, x) in mm and ROI size (z, y, x) in voxels
    spacing_zyx: tuple[float, float, float]
    roi_zyx: tuple[int, int, int]
    # network
    depth: int
    base_filters: int
    # training
    epochs: int
    batch_size: int
    learning_rate: float
    # training replicas (seeds) of the main model and of the ablations that test the paper's
    # claims (utils.model.variants.SEEDED_VARIANTS); other variants are trained once
    seeds: int = 3
    # phantom acquisition resolution multiplier (1.0 = clinical-like voxels)
    phantom_resolution: float = 1.0
    extra: dict = field(default_factory=dict)

    @property
    def n_patients(self) -> int:
        return self.n_training + self.n_internal + self.n_external


PROFILES: dict[str, Profile] = {
    "smoke": Profile(
        name="smoke", seed=2021, n_training=16, n_internal=8, n_external=8,
        spacing_zyx=(5.0, 2.5, 2.5), roi_zyx=(16, 32, 32),
        depth=3, base_filters=4, epochs=2, batch_size=4, learning_rate=1e-3, seeds=2,
        phantom_resolution=0.6,
    ),
    "demo": Profile(
        name="demo", seed=2021, n_training=120, n_internal=60, n_external=60,
        spacing_zyx=(5.0, 2.0, 2.0), roi_zyx=(16, 40, 40),
        depth=4, base_filters=8, epochs=6, batch_size=4, learning_rate=1e-3, seeds=3,
    ),
    "paper": Profile(
        name="paper", seed=2021, n_training=321, n_internal=160, n_external=141,
        spacing_zyx=(3.0, 1.0, 1.0), roi_zyx=(32, 96, 96),
        depth=5, base_filters=16, epochs=150, batch_size=2, learning_rate=1e-3, seeds=3,
    ),
}


def get_profile(name: str | None = None) -> Profile:
    """Return the named profile, or the one selected by ``RPNET_PROFILE``."""
    name = name or os.environ.get(PROFILE_ENV, DEFAULT_PROFILE)
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; choose one of {sorted(PROFILES)}")
    return PROFILES[name]


def as_profile(profile: Profile | str | None = None) -> Profile:
    """``profile`` itself, or the profile of that name (None: :func:`get_profile`'s choice)."""
    return profile if isinstance(profile, Profile) else get_profile(profile)


def with_overrides(profile: Profile, **changes) -> Profile:
    """A copy of ``profile`` with some fields changed (for tests and benchmarks)."""
    return replace(profile, **changes)


@dataclass(frozen=True)
class Paths:
    """The file contract: every path one stage writes and a later one reads (docs/CONTRACTS.md).

    Folders are fields (``get_paths`` fills them for a profile; tests pass temporary ones);
    every file inside them comes from a method here, so no module joins stage paths by hand.
    """

    manifest: Path
    cache_dir: Path
    run_dir: Path
    results_dir: Path
    figures_dir: Path | None = None  # default: run_dir / "figures"
    oracle: Path | None = None  # the phantom's true pCR probabilities (absent for real data)
    phantom_dir: Path | None = None  # where the profile's phantom cohort is generated

    def __post_init__(self) -> None:
        if self.figures_dir is None:
            object.__setattr__(self, "figures_dir", Path(self.run_dir) / "figures")

    # preprocessing cache (utils.preprocessing.cache)
    def cache_file(self, patient_id: str) -> Path:
        return cache_files(self.cache_dir, patient_id)["npz"]

    @property
    def processed_csv(self) -> Path:
        return processed_csv(self.cache_dir)

    # training runs (utils.training.fit, utils.inference.batch)
    models_dir = property(lambda self: Path(self.run_dir) / "models")
    logs_dir = property(lambda self: Path(self.run_dir) / "logs")
    checkpoints_dir = property(lambda self: Path(self.run_dir) / "checkpoints")
    predicted_masks_dir = property(lambda self: Path(self.run_dir) / "predicted_masks")
    predictions_dir = property(lambda self: Path(self.run_dir) / "predictions")
    readout_dir = property(lambda self: Path(self.run_dir) / "readout")

    # the localiser (utils.localisation): its own folder, so it is never taken for a run
    localiser_model = property(lambda self: localiser_model(self.run_dir))
    localisation_csv = property(lambda self: localiser_model(self.run_dir).parent
                                / "localisation.csv")

    def model_file(self, run: str) -> Path:
        return self.models_dir / f"{run}.keras"

    def trained_runs(self) -> list[str]:
        """Names of the runs with a saved model, sorted."""
        return sorted(f.stem for f in Path(self.models_dir).glob("*.keras"))

    def model_card(self, run: str) -> Path:
        return self.models_dir / f"{run}.json"

    def log_csv(self, run: str) -> Path:
        return self.logs_dir / run / "training.csv"

    def tensorboard_dir(self, run: str) -> Path:
        """TensorBoard event files of a run (``tensorboard --logdir runs/<profile>/logs``)."""
        return self.logs_dir / run / "tensorboard"

    def checkpoint_dir(self, run: str) -> Path:
        return self.checkpoints_dir / run

    def predicted_masks_file(self, run: str, patient_id: str) -> Path:
        return predicted_masks_file(self.predicted_masks_dir, run, patient_id)

    def readout_csv(self, run: str) -> Path:
        return self.readout_dir / f"{run}.csv"

    def run_predictions_csv(self, run: str) -> Path:
        """One run's prediction rows (``predictions.csv`` gathers every run's)."""
        return self.predictions_dir / f"{run}.csv"

    # results (utils.training.patients, utils.inference.batch, utils.evaluation)
    split_csv = property(lambda self: Path(self.results_dir) / "split.csv")
    folds_csv = property(lambda self: Path(self.results_dir) / "folds.csv")
    predictions_csv = property(lambda self: Path(self.results_dir) / "predictions.csv")
    metrics_json = property(lambda self: metrics_json(self.results_dir))

    def figure(self, name: str, suffix: str = ".png") -> Path:
        return Path(self.figures_dir) / f"{name}{suffix}"


def cache_files(cache_dir: str | os.PathLike, patient_id: str) -> dict[str, Path]:
    """One patient's cache entry: ``npz`` (arrays), ``sidecar`` (JSON: QC row and both
    files' checksums) and ``tfm`` (the registration transform for other ITK tools)."""
    folder = Path(cache_dir)
    return {"npz": folder / f"{patient_id}.npz", "sidecar": folder / f"{patient_id}.json",
            "tfm": folder / f"{patient_id}_post_to_pre.tfm"}


def processed_csv(cache_dir: str | os.PathLike) -> Path:
    """The preprocessing run's table: one row per patient with status and QC."""
    return Path(cache_dir) / "processed.csv"


def predicted_masks_file(masks_dir: str | os.PathLike, run: str, patient_id: str) -> Path:
    """One run's predicted masks of one patient (``mask_pre``, ``mask_post``, ROI grid)."""
    return Path(masks_dir) / run / f"{patient_id}.npz"


def localiser_model(run_dir: str | os.PathLike) -> Path:
    """The trained localiser of a run folder (``<run_dir>/localiser/localiser.keras``, its
    card beside it as ``localiser.json``)."""
    return Path(run_dir) / "localiser" / "localiser.keras"


def metrics_json(results_dir: str | os.PathLike) -> Path:
    """The evaluation's summary numbers (what README's results table is written from)."""
    return Path(results_dir) / "metrics.json"


def phantom_dir(profile: str) -> Path:
    """Where the profile's phantom cohort is generated."""
    return ROOT / "data" / "phantom" / profile


def get_paths(profile: str | Profile | None = None) -> Paths:
    """The committed layout for a profile: ``figures/`` and ``results/`` for the default
    profile, ``runs/<profile>/`` for the others; ``RPNET_MANIFEST`` selects a user cohort."""
    name = as_profile(profile).name
    override = os.environ.get(MANIFEST_ENV)
    if override:
        manifest = Path(override).resolve()
        oracle = manifest.parent / "oracle.csv"
    else:
        manifest = (ROOT / "data_manifest.csv" if name == DEFAULT_PROFILE
                    else phantom_dir(name) / "manifest.csv")
        oracle = phantom_dir(name) / "oracle.csv"
    run_dir = ROOT / "runs" / name
    default = name == DEFAULT_PROFILE
    return Paths(manifest=manifest, cache_dir=ROOT / "data" / "cache" / name, run_dir=run_dir,
                 results_dir=ROOT / "results" if default else run_dir / "results",
                 figures_dir=ROOT / "figures" if default else run_dir / "figures",
                 oracle=oracle, phantom_dir=phantom_dir(name))


def paths_with(profile: str | Profile | None = None, manifest: Path | None = None,
               cache_dir: Path | None = None, run_dir: Path | None = None) -> Paths:
    """:func:`get_paths` with a command line's folders put in: another ``manifest`` (its
    ``oracle.csv`` beside it), ``cache_dir``, or ``run_dir`` (with ``results/`` and
    ``figures/`` inside it)."""
    changes: dict[str, Path] = {}
    if manifest is not None:
        changes.update(manifest=Path(manifest).resolve(),
                       oracle=Path(manifest).resolve().parent / "oracle.csv")
    if cache_dir is not None:
        changes["cache_dir"] = Path(cache_dir).resolve()
    if run_dir is not None:
        out = Path(run_dir).resolve()
        changes.update(run_dir=out, results_dir=out / "results", figures_dir=out / "figures")
    return replace(get_paths(profile), **changes)


def add_run_options(cli: argparse.ArgumentParser, out_help: str) -> None:
    """The options of every stage command after preprocessing: ``--profile``,
    ``--manifest``, ``--cache`` and ``--out`` (read back by :func:`run_from_args`)."""
    cli.add_argument("--profile", default=None, choices=sorted(PROFILES),
                     help="run size: epochs, batch, seeds, grid (default: RPNET_PROFILE, "
                     "else demo)")
    cli.add_argument("--manifest", type=Path, default=None,
                     help="manifest CSV (default: RPNET_MANIFEST or the profile's phantom)")
    cli.add_argument("--cache", type=Path, default=None,
                     help="preprocessed cache folder (default: data/cache/<profile>)")
    cli.add_argument("--out", type=Path, default=None, help=out_help)


def parse_run_args(cli: argparse.ArgumentParser, argv: Sequence[str] | None,
                   problems_of: Callable[[argparse.Namespace, Paths], list[str]]
                   ) -> tuple[argparse.Namespace, Profile, Paths] | None:
    """A stage command's options, with the profile and paths of :func:`add_run_options`';
    ``None`` after printing every problem ``problems_of`` finds in them (nothing written)."""
    from utils.errors import print_problems

    args = cli.parse_args(argv)
    profile = get_profile(args.profile)
    paths = paths_with(profile, args.manifest, args.cache, args.out)
    return None if print_problems(problems_of(args, paths)) else (args, profile, paths)
