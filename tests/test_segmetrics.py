"""Tests of utils.evaluation.segmetrics against known geometry and an independent SciPy
computation."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from utils import measures
from utils.evaluation import segmetrics as sm


def _grid(shape=(5, 12, 12)) -> np.ndarray:
    return np.zeros(shape, dtype=np.uint8)


def _sphere(radius: float, size: int = 36) -> np.ndarray:
    z, y, x = np.indices((size, size, size)) - (size - 1) / 2
    return (np.sqrt(x**2 + y**2 + z**2) <= radius).astype(np.uint8)


def test_single_voxels_with_anisotropic_spacing():
    a, b = _grid(), _grid()
    a[1, 5, 5], b[3, 5, 5] = 1, 1
    d_ab, d_ba = sm.surface_distances(a, b, (3.0, 1.0, 1.0))
    np.testing.assert_array_equal(d_ab, [6.0])
    np.testing.assert_array_equal(d_ba, [6.0])
    assert sm.hd95(a, b, (3.0, 1.0, 1.0)) == 6.0
    assert sm.mean_surface_distance(a, b, (3.0, 1.0, 1.0)) == 6.0
    c = _grid()
    c[2, 7, 3] = 1  # offsets (1, 2, -2) voxels -> sqrt(3^2 + 2^2 + 2^2) mm
    assert sm.hd95(a, c, (3.0, 1.0, 1.0)) == pytest.approx(np.sqrt(17), abs=1e-6)


def test_hd95_and_msd_definitions_on_a_line():
    """A: one voxel; B: a row of 10 voxels through it, 2 mm apart along x.
    d_ab = [0]; d_ba = 2 * [0..9]. Pooled 95th percentile (linear) = 2 * 8.5 = 17;
    pooled mean = 2 * 45 / 11. (Max of directed 95th percentiles would be 2 * 8.55.)"""
    a, b = _grid((3, 3, 14)), _grid((3, 3, 14))
    a[1, 1, 2] = 1
    b[1, 1, 2:12] = 1
    spacing = (5.0, 5.0, 2.0)
    d_ab, d_ba = sm.surface_distances(a, b, spacing)
    np.testing.assert_allclose(np.sort(d_ba), 2.0 * np.arange(10), atol=1e-6)
    np.testing.assert_allclose(d_ab, [0.0], atol=1e-6)
    assert sm.hd95(a, b, spacing) == pytest.approx(17.0, abs=1e-6)
    assert sm.mean_surface_distance(a, b, spacing) == pytest.approx(90 / 11, abs=1e-6)


def test_concentric_spheres():
    inner, outer = _sphere(10), _sphere(13)
    metrics = sm.segmentation_metrics(inner, outer, (1.0, 1.0, 1.0))
    assert metrics["hd95_mm"] == pytest.approx(3.0, abs=1.0)
    assert metrics["msd_mm"] == pytest.approx(3.0, abs=1.0)
    analytic_dice = 2 * 10**3 / (10**3 + 13**3)
    assert metrics["dice"] == pytest.approx(analytic_dice, rel=0.02)
    assert metrics["vol_a_ml"] == pytest.approx(4 / 3 * np.pi * 10**3 / 1000, rel=0.02)
    assert metrics["vol_b_ml"] == pytest.approx(4 / 3 * np.pi * 13**3 / 1000, rel=0.02)


def test_surface_distances_match_scipy_reference():
    """Surfaces as 6-connected erosion boundaries, distances by SciPy's exact EDT."""
    rng = np.random.default_rng(0)
    a, b = (ndimage.binary_opening(rng.random((10, 24, 24)) > 0.45) for _ in range(2))
    spacing = (3.0, 1.0, 0.7)
    face = ndimage.generate_binary_structure(3, 1)

    def surface(mask):
        padded = np.pad(mask, 1)
        return (padded & ~ndimage.binary_erosion(padded, face))[1:-1, 1:-1, 1:-1]

    surface_a, surface_b = surface(a), surface(b)
    expected_ab = ndimage.distance_transform_edt(~surface_b, sampling=spacing)[surface_a]
    expected_ba = ndimage.distance_transform_edt(~surface_a, sampling=spacing)[surface_b]
    d_ab, d_ba = sm.surface_distances(a, b, spacing)
    np.testing.assert_allclose(d_ab, expected_ab, atol=1e-5)
    np.testing.assert_allclose(d_ba, expected_ba, atol=1e-5)
    pooled = np.r_[expected_ab, expected_ba]
    assert sm.hd95(a, b, spacing) == pytest.approx(np.percentile(pooled, 95), abs=1e-5)
    overlap = 2 * np.sum(a & b) / (a.sum() + b.sum())
    assert measures.dice(a, b) == pytest.approx(overlap, abs=1e-12)


def test_masks_touching_the_image_border():
    """Voxels on the image border are surface. A: a full 4 x 6 x 6 block; B: A without its
    top slice. A's 36 top-slice voxels lie one slice (2.5 mm) from B's top; B's top face
    has 12 voxels 1 mm and 4 voxels 2 mm from A's side walls (in-plane spacing 1 mm)."""
    a = np.ones((4, 6, 6), dtype=np.uint8)
    b = a.copy()
    b[3] = 0
    d_ab, d_ba = sm.surface_distances(a, b, (2.5, 1.0, 1.0))
    assert d_ab.size == 4 * 36 - 2 * 16 and d_ba.size == 3 * 36 - 1 * 16
    np.testing.assert_allclose(np.sort(d_ab), np.r_[np.zeros(76), np.full(36, 2.5)], atol=1e-6)
    np.testing.assert_allclose(np.sort(d_ba), np.r_[np.zeros(76), np.ones(12), [2.0] * 4],
                               atol=1e-6)


def test_identical_masks():
    mask = _sphere(5, size=16)
    metrics = sm.segmentation_metrics(mask, mask, (2.0, 1.0, 1.0))
    assert metrics["dice"] == 1.0
    assert metrics["hd95_mm"] == 0.0 and metrics["msd_mm"] == 0.0


def test_empty_masks():
    empty, full = _grid(), _grid()
    full[2, 3:6, 3:6] = 1
    both = sm.segmentation_metrics(empty, empty, (1.0, 1.0, 1.0))
    assert (both["dice"], both["hd95_mm"], both["msd_mm"], both["vol_a_ml"]) == (1, 0, 0, 0)
    for a, b in ((empty, full), (full, empty)):
        one = sm.segmentation_metrics(a, b, (1.0, 1.0, 1.0))
        assert one["dice"] == 0.0
        assert np.isnan(one["hd95_mm"]) and np.isnan(one["msd_mm"])
    d_full_to_empty, d_empty_to_full = sm.surface_distances(full, empty, (1.0, 1.0, 1.0))
    assert np.isinf(d_full_to_empty).all() and d_empty_to_full.size == 0


def test_box_volume_exact_with_anisotropic_spacing():
    mask = _grid((6, 8, 9))
    mask[1:4, 2:6, 1:6] = 7  # 3 x 4 x 5 voxels; any non-zero label counts
    assert measures.volume_ml(mask, (2.5, 0.7, 0.9)) == pytest.approx(60 * 2.5 * 0.7 * 0.9 / 1000,
                                                                 rel=1e-12)


def test_probability_threshold_and_simpleitk_input():
    prob = np.zeros((6, 8, 9))
    prob[1:4, 2:6, 1:6] = 0.8
    prob[4, 2:6, 1:6] = 0.3  # counted at the default threshold 0, not at 0.5
    spacing = (2.5, 0.7, 0.9)
    assert measures.volume_ml(prob, spacing, threshold=0.5) == pytest.approx(0.0945, rel=1e-12)
    assert measures.volume_ml(prob, spacing) == pytest.approx(0.0945 * 4 / 3, rel=1e-12)
    image = sitk.GetImageFromArray(prob)
    image.SetSpacing(spacing[::-1])
    assert measures.volume_ml(image, threshold=0.5) == pytest.approx(0.0945, rel=1e-12)
    assert sm.hd95(image, prob, spacing, threshold=0.5) == 0.0
    with pytest.raises(ValueError, match="differs from the image's spacing"):
        measures.volume_ml(image, (1.0, 1.0, 1.0))


def test_invalid_inputs():
    with pytest.raises(ValueError, match="spacing_zyx"):
        sm.hd95(_grid(), _grid())
    with pytest.raises(ValueError, match="different shapes"):
        measures.dice(_grid(), _grid((5, 12, 11)))
    with pytest.raises(ValueError, match="different grids"):
        sm.hd95(_grid(), _grid((5, 12, 11)), (1.0, 1.0, 1.0))


def test_largest_slice_of_arrays_and_images():
    mask = _grid()
    mask[1, 2:4, 2:4], mask[3, 2:7, 2:7] = 1, 255
    assert measures.largest_slice(mask) == 3
    assert measures.largest_slice(sitk.GetImageFromArray(mask)) == 3
    assert measures.largest_slice(_grid()) == 2  # empty: the middle slice
