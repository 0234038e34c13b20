"""Run profiles and paths: the one place that says how big each run is and where files go.

One environment variable, ``RPNET_PROFILE`` (``smoke``, ``demo`` or ``paper``; default
``demo``), selects the profile. All profiles run the same code paths; only cohort
sizes, resolution, network width and epochs differ.

Outputs of the default profile (``demo``) go to the committed ``figures/`` and
``results/`` folders; every other profile writes to ``runs/<profile>/`` so that a
smoke test never overwrites the committed figures.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PROFILE = "demo"
PROFILE_ENV = "RPNET_PROFILE"
MANIFEST_ENV = "RPNET_MANIFEST"

# The phantom's sequences. A user's cohort brings its own (the manifest's ``sequence``
# column): any name matching SEQUENCE_NAME; one of them is the reference grid.
SEQUENCES: tuple[str, ...] = ("T2W", "DWI")
SEQUENCE_NAME = re.compile(r"[A-Za-z0-9_+-]+")
REFERENCE_SEQUENCE = "T2W"
TIMEPOINTS: tuple[str, ...] = ("pre", "post")
COHORTS: tuple[str, ...] = ("training", "internal_validation", "external_validation")


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
    # claims (utils.train.SEEDED_VARIANTS); other variants are trained once
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


def with_overrides(profile: Profile, **changes) -> Profile:
    """A copy of ``profile`` with some fields changed (for tests and benchmarks)."""
    return replace(profile, **changes)


@dataclass(frozen=True)
class Paths:
    """Where each pipeline stage reads and writes, for one profile."""

    profile: str

    @property
    def phantom_dir(self) -> Path:
        return ROOT / "data" / "phantom" / self.profile

    @property
    def manifest(self) -> Path:
        """The cohort's manifest: ``RPNET_MANIFEST`` if set, else the profile's phantom."""
        override = os.environ.get(MANIFEST_ENV)
        if override:
            return Path(override).resolve()
        if self.profile == DEFAULT_PROFILE:
            return ROOT / "data_manifest.csv"
        return self.phantom_dir / "manifest.csv"

    @property
    def oracle(self) -> Path:
        """The phantom's true pCR probabilities (absent for real data)."""
        return self.manifest.parent / "oracle.csv" if os.environ.get(MANIFEST_ENV) else (
            self.phantom_dir / "oracle.csv")

    @property
    def cache_dir(self) -> Path:
        return ROOT / "data" / "cache" / self.profile

    @property
    def run_dir(self) -> Path:
        return ROOT / "runs" / self.profile

    @property
    def models_dir(self) -> Path:
        return self.run_dir / "models"

    @property
    def predicted_masks_dir(self) -> Path:
        return self.run_dir / "predicted_masks"

    @property
    def results_dir(self) -> Path:
        return ROOT / "results" if self.profile == DEFAULT_PROFILE else self.run_dir / "results"

    @property
    def figures_dir(self) -> Path:
        return ROOT / "figures" if self.profile == DEFAULT_PROFILE else self.run_dir / "figures"


def get_paths(profile: str | None = None) -> Paths:
    return Paths(get_profile(profile).name)
