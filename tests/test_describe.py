"""Tests of utils.cohort.describe on a generated phantom cohort."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from utils.cohort import describe
from utils.cohort.manifest import load_manifest


def test_mask_volume_counts_foreground_whatever_the_label_value(cohort_copy: Path):
    manifest = load_manifest(cohort_copy)
    before = describe.mask_volumes(manifest).set_index("patient_id")
    row = manifest[manifest["timepoint"] == "post"].iloc[0]
    mask = sitk.ReadImage(row["mask_file"])
    scaled = sitk.Cast(mask, sitk.sitkUInt8) * 255  # the same mask stored as {0, 255}
    assert set(np.unique(sitk.GetArrayViewFromImage(scaled))) <= {0, 255}
    sitk.WriteImage(scaled, row["mask_file"])
    after = describe.mask_volumes(manifest).set_index("patient_id")
    patient = row["patient_id"]
    assert after.loc[patient, "vol_post_ml"] == pytest.approx(before.loc[patient,
                                                                        "vol_post_ml"])
    assert before.loc[patient, "vol_post_ml"] > 0
