"""Tests of utils.training.augment: masks stay aligned with images, exact flips, intensity
changes."""

from __future__ import annotations

import numpy as np

from utils.training import augment as au


def _cube_image() -> tuple[np.ndarray, np.ndarray]:
    mask = np.zeros((12, 32, 32), np.uint8)
    mask[4:9, 8:20, 11:24] = 1
    return mask[..., None].astype(np.float32).repeat(2, -1), mask


def test_augmentation_keeps_masks_aligned_with_images():
    image, mask = _cube_image()
    cfg = au.AugmentConfig(rotate_deg=10, scale=0.1)
    for seed in range(6):
        params = au.spatial_params(np.random.default_rng(seed), cfg)
        params["angle"] = 10.0 if seed % 2 else -10.0  # the largest rotations
        (img_pre, img_post), (m_pre, m_post) = au.apply_spatial([image, image], [mask, mask],
                                                               params, (4.0, 2.0, 2.0))
        np.testing.assert_array_equal(m_pre, m_post)
        np.testing.assert_array_equal(img_pre, img_post)
        bright = img_pre[..., 0] >= 0.5
        dice = 2 * (bright & (m_pre > 0)).sum() / (bright.sum() + m_pre.sum())
        assert dice > 0.9, (seed, params, dice)
        assert m_pre.dtype == np.uint8 and set(np.unique(m_pre)) <= {0, 1}


def test_spatial_transform_of_a_flip_only_is_exact():
    image, mask = _cube_image()
    params = {"angle": 0.0, "scale": 1.0, "flips": (2,)}
    (img,), (msk,) = au.apply_spatial([image], [mask], params, (4.0, 2.0, 2.0))
    np.testing.assert_array_equal(msk, mask[:, :, ::-1])
    np.testing.assert_allclose(img, image[:, :, ::-1], atol=1e-6)


def test_intensity_augmentation_changes_values_not_shape():
    image = np.random.default_rng(0).normal(size=(8, 16, 16, 2)).astype(np.float32)
    cfg = au.AugmentConfig(intensity_prob=1.0)
    out = au.augment_intensity(image, np.random.default_rng(1), cfg)
    assert out.shape == image.shape and out.dtype == np.float32
    assert not np.allclose(out, image)
    assert np.corrcoef(out.ravel(), image.ravel())[0, 1] > 0.8
