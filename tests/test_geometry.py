"""Header-only geometry checks: fields of view, overlap and implausible-geometry warnings."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from utils import geometry


def volume(size=(40, 40, 20), spacing=(2.0, 2.0, 5.0), origin=(0.0, 0.0, 0.0)) -> sitk.Image:
    image = sitk.Image(list(size), sitk.sitkFloat32)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    return image


def test_physical_box_covers_the_voxels_edges():
    lo, hi = geometry.physical_box(volume())
    np.testing.assert_allclose(lo, [-1.0, -1.0, -2.5])
    np.testing.assert_allclose(hi, [79.0, 79.0, 97.5])


def test_overlap_fraction_of_the_smaller_field_of_view():
    a = volume()
    assert geometry.overlap_fraction(a, a) == pytest.approx(1.0)
    half = volume(origin=(40.0, 0.0, 0.0))
    assert geometry.overlap_fraction(a, half) == pytest.approx(0.5)
    assert geometry.overlap_fraction(a, volume(origin=(500.0, 0.0, 0.0))) == 0.0


def test_pair_warnings_name_thin_volumes_odd_voxels_and_poor_overlap():
    pre = {"T2W": volume(), "DWI": volume(spacing=(20.0, 20.0, 5.0), size=(4, 4, 20))}
    post = {"T2W": volume(origin=(60.0, 0.0, 0.0), size=(40, 40, 3)), "DWI": volume()}
    warnings = geometry.pair_geometry_warnings(pre, post, "T2W", roi_zyx=(16, 40, 40),
                                               spacing_zyx=(5.0, 2.0, 2.0))
    text = "\n".join(warnings)
    assert "pre DWI: voxel size (20, 20, 5) mm is outside the plausible MRI range" in text
    assert "post T2W: z extent 15 mm is less than half the ROI box's 80 mm" in text
    assert "fields of view overlap by" in text
    assert geometry.pair_geometry_warnings({"T2W": volume()}, {"T2W": volume()}, "T2W",
                                           (16, 40, 40), (5.0, 2.0, 2.0)) == []


def test_sequences_outside_the_reference_are_named():
    exam = {"T2W": volume(), "DWI": volume(origin=(0.0, 0.0, 900.0)), "ADC": volume()}
    assert geometry.sequences_outside_reference(exam, "T2W") == {"DWI": 0.0}
