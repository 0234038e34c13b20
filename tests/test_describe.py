"""Tests of utils.cohort.describe on a generated phantom cohort."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from utils import measures
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


def _blank(mask_file: str) -> None:
    mask = sitk.ReadImage(mask_file)
    sitk.WriteImage(mask * 0, mask_file)


def test_table_one_scores_volume_reduction_with_the_evaluations_rule(cohort_copy: Path):
    """An empty post mask scores 1; an empty pre mask is floored (finite), as in evaluation."""
    from utils.evaluation.labels import VOLUME_GT
    from utils.evaluation.scoretable import score_table

    manifest = load_manifest(cohort_copy)
    first, second = sorted(manifest["patient_id"].unique())[:2]
    rows = manifest.drop_duplicates(["patient_id", "timepoint"]).set_index(
        ["patient_id", "timepoint"])
    _blank(rows.loc[(first, "post"), "mask_file"])
    _blank(rows.loc[(second, "pre"), "mask_file"])
    volumes = describe.mask_volumes(manifest).set_index("patient_id")
    assert volumes.loc[first, "vol_post_ml"] == 0 and volumes.loc[first, "volume_reduction"] == 1
    post = volumes.loc[second, "vol_post_ml"]
    assert volumes.loc[second, "vol_pre_ml"] == 0 and post > 0
    assert volumes.loc[second, "volume_reduction"] == pytest.approx(
        1 - post / measures.VOLUME_FLOOR_ML)

    predictions = volumes.reset_index().assign(
        model="full", cohort="training", centre="A", pcr=0, score=0.5,
        vol_pre_true_ml=lambda t: t["vol_pre_ml"], vol_post_true_ml=lambda t: t["vol_post_ml"])
    scores = score_table(predictions)
    scores = scores[scores["model"] == VOLUME_GT].set_index("patient_id")
    np.testing.assert_array_equal(scores.loc[volumes.index, "score"],
                                  volumes["volume_reduction"])


def test_example_exams_draw_each_mask_contour_through_show_slice(cohort_copy: Path):
    manifest = load_manifest(cohort_copy)
    examples = describe.pick_examples(manifest).head(1)
    fig = describe.plot_example_exams(manifest, examples)
    axes = fig.axes
    sequences = sorted(manifest["sequence"].unique())
    assert len(axes) == 2 * len(sequences)
    assert [ax.get_title() for ax in axes] == [f"{tp} {seq}" for tp in ("pre", "post")
                                               for seq in ("T2W", *[s for s in sequences
                                                                    if s != "T2W"])]
    for ax in axes:  # show_slice: axes off, one grey image, the tumour contour in red
        assert not ax.axison and len(ax.images) == 1
        assert ax.collections or any(line.get_color() == "tab:red" for line in ax.lines)
    assert "pCR" in axes[0].texts[0].get_text()
