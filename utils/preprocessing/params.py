"""Preprocessing's settings and its per-patient result: :class:`PreprocessParams` (every
setting that changes the cache, all of it in the cache key) and :class:`PreprocessedPair`.

Shared by the pipeline, its steps (intensity, registration), the cache and prediction, so
none of them imports the pipeline for a type.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import SimpleITK as sitk

from utils.config import REFERENCE_SEQUENCE, SEQUENCE_NAME, SEQUENCES, Profile, as_profile
from utils.errors import InputError

PIPELINE_VERSION = "2"
Images = Mapping[str, sitk.Image]


# --------------------------------------------------------------------------- parameters
@dataclass(frozen=True)
class PreprocessParams:
    """Every setting that changes the cached output (all of it enters the cache key)."""

    spacing_zyx: tuple[float, float, float]
    roi_zyx: tuple[int, int, int]
    # the cohort's sequences in channel order (reference first) and the reference grid's
    sequences: tuple[str, ...] = SEQUENCES
    reference_sequence: str = REFERENCE_SEQUENCE
    # N4 bias-field correction
    n4_shrink_mm: float = 8.0  # coarse voxel of the fit (shrink ~4 on 2 mm, ~6 on 1.25 mm)
    n4_iterations: tuple[int, ...] = (10, 10)  # per fitting level
    n4_convergence: float = 1e-3
    n4_control_points: int = 4
    n4_spline_order: int = 2
    n4_others: str = "none"  # non-reference sequences: "none" | "reference_field" | "own"
    # body mask: threshold = factor * Otsu threshold
    body_threshold_factor: float = 0.5
    # rigid registration (utils.preprocessing.registration)
    registration: str = "strict"  # "strict" (QC flags raise) | "flag" | "identity" (none)
    reg_init: str = "moments"  # "identity" | "geometry" | "moments" | "best" (lowest metric)
    reg_shrink: tuple[int, ...] = (4, 2, 1)
    reg_sigmas_vox: tuple[float, ...] = (2.0, 1.0, 0.0)
    reg_sampling: tuple[float, ...] = (0.5, 0.2, 0.05)  # random fraction per level
    reg_iterations: int = 100
    reg_bins: int = 32
    reg_learning_rate: float = 2.0  # regular-step gradient descent, scales from index shift
    reg_min_step: float = 0.01
    reg_relaxation: float = 0.8
    reg_scales: str = "index"  # optimizer scales from "index" or "physical" shift
    reg_fallback: bool = True  # retry a QC-flagged registration with FALLBACK_REGISTRATION
    reg_seed: int = 2021
    reg_local_margin_mm: float = 30.0  # local QC box: tumour bounding box grown by this
    # registration QC thresholds
    qc_min_body_dice: float = 0.85  # counted where both fields of view overlap
    qc_max_translation_mm: float = 30.0  # beyond the initial (centre-of-mass) alignment
    qc_max_rotation_deg: float = 20.0
    qc_metric_tolerance: float = 0.03  # Mattes MI; identity is kept when this close to the result
    qc_min_local_ncc: float = 0.85  # pre/post T2W edge correlation in the local QC box
    qc_min_local_coverage: float = 0.25  # share of the local QC box inside the post exam
    qc_min_overlap: float = 0.1  # fields of view after the initial alignment (of the smaller)
    # intensity normalisation: (x - median) / ((p95 - p5) / 3.29), clipped below at the
    # body's 0.5th percentile and above at clip_z_max robust SDs (see normalise)
    scale_percentiles: tuple[float, float] = (5.0, 95.0)
    clip_percentiles: tuple[float, float] = (0.5, 100.0)
    clip_z_max: float = 30.0

    @classmethod
    def from_profile(cls, profile: Profile | str | None = None, **changes: Any) -> PreprocessParams:
        """Parameters for a profile (target spacing, ROI size), with optional changes."""
        prof = as_profile(profile)
        base = cls(spacing_zyx=prof.spacing_zyx, roi_zyx=prof.roi_zyx)
        return dataclasses.replace(base, **changes)

    def __post_init__(self) -> None:
        """Plain tuples (lists from JSON or a CLI are accepted) and consistent values."""
        fix = {"spacing_zyx": tuple(float(v) for v in self.spacing_zyx),
               "roi_zyx": tuple(int(v) for v in self.roi_zyx),
               "sequences": tuple(str(v) for v in self.sequences)}
        for name, value in fix.items():
            object.__setattr__(self, name, value)
        if len(self.spacing_zyx) != 3 or min(self.spacing_zyx) <= 0:
            raise ValueError(f"spacing_zyx must be three positive mm values, not "
                             f"{self.spacing_zyx}")
        if len(self.roi_zyx) != 3 or min(self.roi_zyx) < 1:
            raise ValueError(f"roi_zyx must be three positive voxel counts, not {self.roi_zyx}")
        bad = [s for s in self.sequences if not SEQUENCE_NAME.fullmatch(s)]
        if bad or len(set(self.sequences)) != len(self.sequences) or not self.sequences:
            raise ValueError(f"sequences must be distinct names of letters, digits, '_', '-' "
                             f"and '+', not {list(self.sequences)}")
        if self.reference_sequence not in self.sequences:
            raise ValueError(f"reference sequence {self.reference_sequence!r} is not among "
                             f"the sequences {list(self.sequences)}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready settings (tuples as lists), as stored in the cache's ``meta``."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in
                dataclasses.asdict(self).items()}

    def digest(self) -> str:
        """SHA-256 of the settings and :data:`PIPELINE_VERSION` (part of the cache key)."""
        text = json.dumps({"version": PIPELINE_VERSION, **self.to_dict()}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()


# --------------------------------------------------------------------------- result type
@dataclass
class PreprocessedPair:
    """One patient's preprocessed ROI crops plus what is needed to map results back.

    ``meta`` is JSON-serialisable and self-sufficient for :func:`roi_to_original`
    (reference grid, original T2W geometries, transform, ROI start).
    """

    patient_id: str
    image_pre: np.ndarray  # float32 (z, y, x, C)
    image_post: np.ndarray  # float32 (z, y, x, C), registered into pre space
    mask_pre: np.ndarray | None  # uint8 (z, y, x) or None without masks
    mask_post: np.ndarray | None
    spacing_zyx: tuple[float, float, float]
    meta: dict[str, Any]
    transform: sitk.Transform  # pre physical point -> post physical point
    qc_images: dict[str, sitk.Image] = field(default_factory=dict)  # bias fields, body masks
    timing_s: dict[str, float] = field(default_factory=dict)  # per step; not cached (not
    # deterministic): it goes to the QC table, so identical inputs give identical cache files

    def arrays(self) -> dict[str, np.ndarray]:
        """The cache arrays of docs/CONTRACTS.md (masks are required there)."""
        if self.mask_pre is None or self.mask_post is None:
            raise InputError(self.patient_id, "cannot cache a pair without tumour masks")
        return {"image_pre": self.image_pre, "image_post": self.image_post,
                "mask_pre": self.mask_pre, "mask_post": self.mask_post,
                "spacing_zyx": np.asarray(self.spacing_zyx, dtype=np.float64),
                "meta_json": np.array(json.dumps(self.meta, sort_keys=True))}


@dataclasses.dataclass(frozen=True)
class RoiPlacement:
    """Where a patient's ROI goes without its masks: a centre (physical x, y, z in mm, pre
    exam) and optionally the expected tumour extent (mm), which sizes the local registration
    QC box as a tumour's bounding box would (:func:`~utils.preprocessing.registration_qc.
    local_region`). From the localiser (:mod:`utils.localisation`) or a person."""

    center_mm: tuple[float, float, float]
    extent_mm: tuple[float, float, float] | None = None

    def key(self) -> str:
        """A stable text for the cache key."""
        values = [*self.center_mm, *(self.extent_mm or ())]
        return ",".join(f"{float(v):.6f}" for v in values)


# localisation.csv (utils.localisation.run): one row per validation patient
CENTRE_COLUMNS = ["centre_x_mm", "centre_y_mm", "centre_z_mm"]
EXTENT_COLUMNS = ["extent_x_mm", "extent_y_mm", "extent_z_mm"]
LOCALISATION_COLUMNS = ["patient_id", "cohort", *CENTRE_COLUMNS, "found", "max_probability",
                        "component_ml", *EXTENT_COLUMNS]


def roi_placements(table: pd.DataFrame) -> dict[str, RoiPlacement]:
    """``{patient_id: RoiPlacement}`` from a localisation table: the centre, and the found
    component's extent (none when nothing was found: the QC box is then the ROI box)."""
    missing = sorted(set(LOCALISATION_COLUMNS) - set(table.columns))
    if missing:
        raise ValueError(f"localisation table lacks the columns {missing}")
    found = table["found"].astype(str).str.lower() == "true"
    return {str(r["patient_id"]): RoiPlacement(
        tuple(float(r[c]) for c in CENTRE_COLUMNS),
        tuple(float(r[c]) for c in EXTENT_COLUMNS) if ok else None)
        for (_, r), ok in zip(table.iterrows(), found, strict=True)}

