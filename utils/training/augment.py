"""Training augmentation of one patient (NumPy/SciPy; no Keras).

The same spatial transform for pre, post and both masks (random in-plane flips, rotation about
z within ±10°, isotropic scaling within ±10%, via ``scipy.ndimage.affine_transform`` in mm,
order 1 for images and 0 for masks), then intensity changes drawn per exam and channel
(gamma, smooth multiplicative bias field, Gaussian noise). Each sample's generator is seeded
from ``(seed, epoch, position in the epoch)`` (:func:`sample_rng`), so batches do not depend
on worker order or on a restart.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import ndimage

from utils.repro import derived_rng

if TYPE_CHECKING:
    from utils.training.patients import PatientArrays


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


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The augmentation generator of one sample: a function of (seed, epoch, index) only."""
    return derived_rng(seed, "augment", epoch, index)


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
