"""The data contract: every corruption is reported, naming the row, patient or file."""

from __future__ import annotations

import gzip
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from tests.dicom_series import write_dicom_series
from utils import config
from utils.cohort import manifest, validate


def messages(path: Path) -> list[str]:
    """The errors validation reports (warnings left out)."""
    return [str(p) for p in validate.validate_manifest(path, workers=1) if not p.warning]


def warnings_of(path: Path) -> list[str]:
    """The warnings validation reports."""
    return [str(p) for p in validate.validate_manifest(path, workers=1) if p.warning]


def edit(path: Path, change) -> None:
    table = pd.read_csv(path, dtype={"patient_id": str})
    change(table)
    table.to_csv(path, index=False)


def test_the_tiny_cohort_is_valid(tiny_cohort):
    assert messages(tiny_cohort) == []
    table = validate.require_valid(tiny_cohort)
    assert list(table.columns[:len(manifest.COLUMNS)]) == list(manifest.COLUMNS)
    assert table["patient_id"].nunique() == 6


def test_committed_manifest_has_the_schema_and_design():
    assert validate.validate_manifest(config.ROOT / "data_manifest.csv", check_files=False) == []


def test_deleted_file_is_named(cohort_copy):
    victim = cohort_copy.parent / "TR002" / "post_DWI.nii.gz"
    victim.unlink()
    found = messages(cohort_copy)
    assert len(found) == 1
    assert "TR002" in found[0] and "post_DWI.nii.gz" in found[0] and "does not exist" in found[0]


def test_truncated_gzip_is_named_even_with_a_matching_checksum(cohort_copy):
    victim = cohort_copy.parent / "IV001" / "pre_T2W.nii.gz"
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    assert any("sha256" in m and "IV001" in m for m in messages(cohort_copy))
    manifest.fill_checksums(cohort_copy)
    found = messages(cohort_copy)
    assert any("unreadable or truncated" in m and "IV001" in m and "pre_T2W" in m for m in found)


def test_label_two_is_named(cohort_copy):
    edit(cohort_copy, lambda t: t.__setitem__("pcr", t["pcr"].where(t["patient_id"] != "TR003", 2)))
    found = messages(cohort_copy)
    assert any("pcr 2" in m and "TR003" in m and "row" in m for m in found)


def test_mask_with_another_spacing_is_named(cohort_copy):
    victim = cohort_copy.parent / "EV001" / "pre_mask.nii.gz"
    mask = sitk.ReadImage(str(victim))
    mask.SetSpacing([s * 1.5 for s in mask.GetSpacing()])
    sitk.WriteImage(mask, str(victim), True)
    manifest.fill_checksums(cohort_copy)
    found = messages(cohort_copy)
    assert any("mask spacing" in m and "EV001" in m and "pre_mask" in m for m in found)


def test_patient_in_two_cohorts_is_named(cohort_copy):
    def move_one_row(table: pd.DataFrame) -> None:
        first = table.index[table["patient_id"] == "TR001"][0]
        table.loc[first, "cohort"] = "external_validation"
    edit(cohort_copy, move_one_row)
    found = messages(cohort_copy)
    assert any("TR001" in m and "several cohort values" in m for m in found)


def test_missing_post_exam_is_named(cohort_copy):
    edit(cohort_copy, lambda t: t.drop(t.index[(t["patient_id"] == "EV002")
                                              & (t["timepoint"] == "post")], inplace=True))
    found = messages(cohort_copy)
    assert found == ["patient EV002: no post-treatment exam"]


def test_nan_voxel_is_named(cohort_copy):
    victim = cohort_copy.parent / "TR001" / "post_DWI.nii.gz"
    image = sitk.Cast(sitk.ReadImage(str(victim)), sitk.sitkFloat32)
    pixels = sitk.GetArrayFromImage(image)
    pixels[3, 10, 10] = np.nan
    corrupted = sitk.GetImageFromArray(pixels)
    corrupted.CopyInformation(image)
    sitk.WriteImage(corrupted, str(victim), True)
    manifest.fill_checksums(cohort_copy)
    found = messages(cohort_copy)
    assert any("1 NaN or infinite voxel" in m and "TR001" in m and "post_DWI" in m for m in found)


def test_empty_mask_duplicate_row_and_unknown_values_are_all_reported_at_once(cohort_copy):
    victim = cohort_copy.parent / "TR002" / "pre_mask.nii.gz"
    mask = sitk.ReadImage(str(victim))
    empty = sitk.Image(mask.GetSize(), mask.GetPixelID())
    empty.CopyInformation(mask)
    sitk.WriteImage(empty, str(victim), True)
    manifest.fill_checksums(cohort_copy)

    def corrupt(table: pd.DataFrame) -> None:
        table.loc[len(table)] = table.loc[0]
        table.loc[1, "sequence"] = "FLAIR"
        table.loc[2, "cea_pre"] = -3
    edit(cohort_copy, corrupt)
    text = "\n".join(messages(cohort_copy))
    assert "mask is empty" in text and "TR002" in text
    assert "duplicate row" in text
    assert "adds ['FLAIR']" in text  # an exam whose sequence set differs from the cohort's
    assert "cea_pre -3" in text


def test_missing_and_unknown_columns(cohort_copy):
    edit(cohort_copy, lambda t: t.rename(columns={"pcr": "response"}, inplace=True))
    found = messages(cohort_copy)
    assert "missing column 'pcr'" in found[0]
    assert any("unknown column 'response'" in m for m in found)


def test_checksum_mismatch_is_named(cohort_copy):
    victim = cohort_copy.parent / "TR003" / "pre_DWI.nii.gz"
    raw = gzip.decompress(victim.read_bytes())
    victim.write_bytes(gzip.compress(raw[:-1] + bytes([raw[-1] ^ 1])))
    found = messages(cohort_copy)
    assert found and all("TR003" in m and "sha256" in m for m in found)


def test_cli_exits_non_zero_and_prints_every_problem(cohort_copy):
    (cohort_copy.parent / "TR001" / "pre_DWI.nii.gz").unlink()
    result = subprocess.run([sys.executable, "-m", "utils.manifest", "check", str(cohort_copy)],
                            capture_output=True, text=True, cwd=config.ROOT)
    assert result.returncode == 1
    assert "TR001" in result.stdout and "1 problem(s)" in result.stdout


def test_read_image_strips_identifying_metadata(tmp_path):
    image = sitk.Image([4, 4, 4], sitk.sitkInt16)
    image.SetMetaData("0010|0010", "DOE^JANE")
    path = tmp_path / "x.nrrd"
    sitk.WriteImage(image, str(path))
    assert not any("DOE" in image_value for image_value in
                   [manifest.read_image(path).GetMetaData(k)
                    for k in manifest.read_image(path).GetMetaDataKeys()])


def test_read_image_reads_a_dicom_series_with_its_geometry(tmp_path):
    volume = sitk.GetImageFromArray(np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6))
    volume.SetSpacing((0.8, 0.8, 3.0))
    volume.SetOrigin((10.0, -5.0, 2.0))
    folder = write_dicom_series(tmp_path / "series", volume)  # with patient identifiers
    image = manifest.read_image(folder)
    assert image.GetSize() == (6, 5, 4)
    assert image.GetSpacing() == pytest.approx((0.8, 0.8, 3.0))
    assert image.GetOrigin() == pytest.approx((10.0, -5.0, 2.0))
    assert image.GetMetaDataKeys() == ()


@pytest.mark.parametrize("value", ["inf", "-inf", "nan-ish", "1e999"])
def test_non_finite_marker_values_are_rejected_naming_the_patient(cohort_copy, value):
    def corrupt(table: pd.DataFrame) -> None:
        table["cea_post"] = table["cea_post"].astype(object)
        table.loc[table["patient_id"] == "TR001", "cea_post"] = value
    edit(cohort_copy, corrupt)
    found = [m for m in messages(cohort_copy) if "cea_post" in m]
    assert found and all("TR001" in m for m in found), found
    assert "finite number" in found[0]


@pytest.mark.parametrize("bad_id", ["../evil", "a b", ".hidden", "TR001/x"])
def test_unsafe_patient_ids_are_rejected(cohort_copy, bad_id):
    edit(cohort_copy, lambda t: t.replace({"patient_id": {"TR001": bad_id}}, inplace=True))
    found = [m for m in messages(cohort_copy) if "safe file name" in m]
    assert found and bad_id in found[0] and "row" in found[0]


def test_patient_ids_differing_only_by_case_are_rejected(cohort_copy):
    def corrupt(table: pd.DataFrame) -> None:
        validation = table["cohort"] != "training"
        victim = table.loc[validation, "patient_id"].iloc[0]
        table.loc[table["patient_id"] == victim, "patient_id"] = "tr001"
    edit(cohort_copy, corrupt)
    found = [m for m in messages(cohort_copy) if "differ only by case" in m]
    assert found and "TR001" in found[0] and "tr001" in found[0]
