"""The localiser's input: one exam's whole field of view on a coarse grid of fixed size.

The grid has the reference sequence's orientation, is centred on its field of view and has
the profile's coarse spacing and shape (:class:`LocaliserConfig`), so every exam of every
centre gives an array of one shape. Each sequence is smoothed to the coarse spacing
(anti-aliasing), resampled linearly and normalised with the preprocessing's robust z-score
inside the body mask; no N4 (at 6 mm the bias field barely varies inside the pelvis). A mask
is resampled linearly to a voxel fraction (the soft training target).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import SimpleITK as sitk

from utils.config import Profile, as_profile
from utils.errors import InputError
from utils.geometry import image_from_geometry, resample
from utils.parallel import map_processes
from utils.preprocessing.intensity import body_mask, normalise
from utils.preprocessing.params import PreprocessParams
from utils.preprocessing.pipeline import input_files, read_input
from utils.progress import progress_bar


@dataclasses.dataclass(frozen=True)
class LocaliserConfig:
    """Grid, network and training schedule of the localiser (fixed per profile)."""

    spacing_zyx: tuple[float, float, float]
    shape_zyx: tuple[int, int, int]
    depth: int
    base_filters: int
    epochs: int
    batch_size: int
    learning_rate: float
    threshold: float = 0.5  # probability above which a voxel is tumour

    @classmethod
    def for_profile(cls, profile: Profile | str | None = None) -> LocaliserConfig:
        return LOCALISER[as_profile(profile).name]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


LOCALISER = {
    "smoke": LocaliserConfig((8.0, 8.0, 8.0), (8, 32, 32), depth=3, base_filters=4,
                             epochs=3, batch_size=4, learning_rate=3e-3),
    "demo": LocaliserConfig((6.0, 6.0, 6.0), (16, 48, 48), depth=4, base_filters=8,
                            epochs=30, batch_size=4, learning_rate=2e-3),
    "paper": LocaliserConfig((4.0, 4.0, 4.0), (32, 80, 80), depth=4, base_filters=16,
                             epochs=100, batch_size=2, learning_rate=1e-3),
}


def coarse_grid(image: sitk.Image, cfg: LocaliserConfig) -> sitk.Image:
    """An empty grid of ``cfg.shape_zyx`` voxels at ``cfg.spacing_zyx``, centred on the
    field of view of ``image`` and with its orientation."""
    size = np.asarray(cfg.shape_zyx[::-1])
    spacing = np.asarray(cfg.spacing_zyx[::-1], float)
    centre = np.asarray(image.TransformContinuousIndexToPhysicalPoint(
        [(n - 1) / 2.0 for n in image.GetSize()]))
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    origin = centre - direction @ (spacing * (size - 1) / 2.0)
    return image_from_geometry({"size": size.tolist(), "spacing": spacing.tolist(),
                                "origin": origin.tolist(), "direction": image.GetDirection()})


def _smoothed(image: sitk.Image, cfg: LocaliserConfig) -> sitk.Image:
    """Gaussian anti-aliasing down to the coarse spacing (sigma 0.4 coarse voxels per axis,
    none along an axis that is already coarser)."""
    spacing = np.asarray(image.GetSpacing())
    sigma = 0.4 * np.maximum(np.asarray(cfg.spacing_zyx[::-1]) ** 2 - spacing ** 2, 0) ** 0.5
    image = sitk.Cast(image, sitk.sitkFloat32)
    if not np.any(sigma > 0):
        return image
    return sitk.SmoothingRecursiveGaussian(image, [float(max(s, 1e-3)) for s in sigma])


def coarse_exam(images: Mapping[str, sitk.Image], sequences: Sequence[str],
                cfg: LocaliserConfig, params: PreprocessParams, mask: sitk.Image | None = None
                ) -> tuple[np.ndarray, np.ndarray | None, sitk.Image]:
    """``(array (z, y, x, C) float32, mask fraction (z, y, x) or None, grid)`` of one exam;
    the grid follows ``params.reference_sequence``, normalisation uses ``params``."""
    reference = params.reference_sequence
    grid = coarse_grid(images[reference], cfg)
    coarse = {seq: resample(_smoothed(images[seq], cfg), grid) for seq in sequences}
    body = body_mask(coarse[reference], params.body_threshold_factor)
    channels = [normalise(coarse[seq], body, params.clip_percentiles, params.scale_percentiles,
                          params.clip_z_max)[0] for seq in sequences]
    target = None
    if mask is not None:
        binary = sitk.Cast(sitk.BinaryThreshold(mask, 1, 255, 1, 0), sitk.sitkFloat32)
        target = sitk.GetArrayFromImage(resample(binary, grid)).astype(np.float32)
    return np.stack(channels, axis=-1), target, grid


# --------------------------------------------------------------------------- a cohort
def _coarse_job(job: tuple[pd.DataFrame, LocaliserConfig, PreprocessParams, bool]
                ) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    """One patient's coarse pre exam (and mask if ``with_mask``); a pool task."""
    rows, cfg, params, with_mask = job
    sequences = params.sequences
    patient_id = str(rows["patient_id"].iloc[0])
    files = input_files(rows)
    needed = [f"pre_{seq}" for seq in sequences] + (["pre_mask"] if with_mask else [])
    missing = [key for key in needed if key not in files]
    if missing:
        raise InputError(patient_id, f"the localiser needs {', '.join(missing)} (no such "
                         "manifest row or mask_path)")
    images = {seq: read_input(patient_id, files[f"pre_{seq}"]) for seq in sequences}
    mask = read_input(patient_id, files["pre_mask"]) if with_mask else None
    x, y, grid = coarse_exam(images, sequences, cfg, params, mask)
    geometry = {"origin": grid.GetOrigin(), "spacing": grid.GetSpacing(),
                "direction": grid.GetDirection(), "size": grid.GetSize()}
    return x, y, geometry


def coarse_cohort(manifest: pd.DataFrame, patient_ids: Sequence[str], cfg: LocaliserConfig,
                  params: PreprocessParams, with_mask: bool, workers: int | None = None,
                  progress: bool = True, label: str = "coarse"
                  ) -> tuple[np.ndarray, np.ndarray | None, list[dict]]:
    """Coarse pre exams of ``patient_ids`` stacked, their masks (training) and grids."""
    groups = dict(list(manifest.groupby("patient_id", sort=True)))
    jobs = [(groups[pid], cfg, params, with_mask) for pid in patient_ids]
    bar = progress_bar(len(jobs), label, enabled=progress, unit="patient")
    out = map_processes(_coarse_job, jobs, workers, spawn=True, on_result=lambda _: bar.update())
    bar.close()
    x = np.stack([o[0] for o in out])
    y = np.stack([o[1] for o in out]) if with_mask else None
    return x, y, [o[2] for o in out]


def grid_image(geometry: Mapping[str, Any]) -> sitk.Image:
    """An empty image with a stored grid's geometry (a pool task's picklable result)."""
    grid = sitk.Image([int(v) for v in geometry["size"]], sitk.sitkUInt8)
    grid.SetOrigin(geometry["origin"])
    grid.SetSpacing(geometry["spacing"])
    grid.SetDirection(geometry["direction"])
    return grid
