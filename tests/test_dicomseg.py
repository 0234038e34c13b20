"""DICOM-SEG output (utils.inference.dicomseg): a predicted mask written as a Segmentation
object on its source series, read back by highdicom and pydicom voxel for voxel, with the
source's geometry and without the source's identifying fields beyond those the standard needs."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from tests.dicom_series import IDENTIFYING, write_dicom_series
from utils.cohort.manifest import read_image
from utils.inference import dicomseg


@pytest.fixture(scope="module")
def series(tmp_path_factory) -> tuple[Path, sitk.Image, np.ndarray]:
    """An oblique 12-slice series and a mask on its grid (two blobs, some empty slices)."""
    rng = np.random.default_rng(3)
    volume = sitk.GetImageFromArray(rng.normal(300, 40, (12, 40, 48)).astype(np.int16))
    volume.SetSpacing((0.8, 0.9, 3.0))
    volume.SetOrigin((-20.0, 10.0, 5.0))
    volume.SetDirection((1, 0, 0, 0, 0.8, -0.6, 0, 0.6, 0.8))
    folder = write_dicom_series(tmp_path_factory.mktemp("dicom") / "T2W", volume)
    reference = read_image(folder)
    mask = np.zeros((12, 40, 48), np.uint8)
    mask[3:7, 10:20, 5:30] = 1
    mask[9, 30:35, 40:44] = 1
    return folder, reference, mask


def _mask_image(mask: np.ndarray, reference: sitk.Image) -> sitk.Image:
    image = sitk.GetImageFromArray(mask)
    image.CopyInformation(reference)
    return image


def test_a_segmentation_reads_back_voxel_for_voxel_on_the_source_grid(series, tmp_path):
    folder, reference, mask = series
    target = dicomseg.write_segmentation(_mask_image(mask, reference), folder,
                                         tmp_path / "mask_pre.dcm")
    np.testing.assert_array_equal(dicomseg.read_segmentation(target, reference), mask)
    seg = hd.seg.segread(target)
    sources = {str(ds.SOPInstanceUID) for ds in dicomseg.series_datasets(folder)}
    assert {uid[2] for uid in seg.get_source_image_uids()} == sources
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[str(ds.SOPInstanceUID) for ds in
                                  dicomseg.series_datasets(folder)], segment_numbers=[1])
    assert int(pixels.sum()) == int(mask.sum())


def test_the_segmentation_has_the_source_geometry(series, tmp_path):
    folder, reference, mask = series
    target = dicomseg.write_segmentation(_mask_image(mask, reference), folder,
                                         tmp_path / "seg.dcm")
    seg, source = pydicom.dcmread(target), pydicom.dcmread(next(folder.iterdir()))
    assert seg.FrameOfReferenceUID == source.FrameOfReferenceUID
    assert seg.StudyInstanceUID == source.StudyInstanceUID
    shared = seg.SharedFunctionalGroupsSequence[0]
    np.testing.assert_allclose(shared.PlaneOrientationSequence[0].ImageOrientationPatient,
                               source.ImageOrientationPatient, atol=1e-6)
    np.testing.assert_allclose(shared.PixelMeasuresSequence[0].PixelSpacing,
                               source.PixelSpacing)
    positions = sorted(tuple(item.PlanePositionSequence[0].ImagePositionPatient)
                       for item in seg.PerFrameFunctionalGroupsSequence)
    expected = sorted(tuple(reference.TransformIndexToPhysicalPoint((0, 0, z)))
                      for z in range(reference.GetDepth()))
    np.testing.assert_allclose(positions, expected, atol=1e-3)


def test_only_the_fields_needed_to_file_it_with_its_study_are_copied(series, tmp_path):
    folder, reference, mask = series
    seg = pydicom.dcmread(dicomseg.write_segmentation(_mask_image(mask, reference), folder,
                                                      tmp_path / "seg.dcm"))
    assert seg.PatientID == "PID-0042" and str(seg.PatientName) == "Doe^Jane"
    assert seg.PatientBirthDate == "" and seg.PatientSex == ""
    assert "InstitutionName" not in seg
    text = str(seg)
    assert IDENTIFYING["0008|0080"] not in text and "19600101" not in text


def test_the_same_prediction_gives_the_same_uids(series, tmp_path):
    folder, reference, mask = series
    image = _mask_image(mask, reference)
    a = pydicom.dcmread(dicomseg.write_segmentation(image, folder, tmp_path / "a.dcm"))
    b = pydicom.dcmread(dicomseg.write_segmentation(image, folder, tmp_path / "b.dcm"))
    assert a.SOPInstanceUID == b.SOPInstanceUID and a.SeriesInstanceUID == b.SeriesInstanceUID
    other = mask.copy()
    other[0, 0, 0] = 1
    c = pydicom.dcmread(dicomseg.write_segmentation(_mask_image(other, reference), folder,
                                                    tmp_path / "c.dcm"))
    assert c.SOPInstanceUID != a.SOPInstanceUID


def test_a_mask_on_another_grid_is_refused_naming_the_folder(series, tmp_path):
    folder, reference, mask = series
    shifted = _mask_image(mask, reference)
    shifted.SetOrigin([v + 1.5 for v in reference.GetOrigin()])
    with pytest.raises(dicomseg.DicomSegError, match="not a slice of the mask's grid") as info:
        dicomseg.write_segmentation(shifted, folder, tmp_path / "seg.dcm")
    assert str(folder) in str(info.value) and not (tmp_path / "seg.dcm").exists()


def test_a_series_without_a_frame_of_reference_is_refused_clearly(tmp_path):
    volume = sitk.GetImageFromArray(np.ones((3, 8, 8), np.int16))
    folder = write_dicom_series(tmp_path / "series", volume, identifying=False)
    for file in folder.iterdir():
        ds = pydicom.dcmread(file)
        del ds.FrameOfReferenceUID
        ds.save_as(file)
    mask = sitk.Image(volume.GetSize(), sitk.sitkUInt8)
    mask.CopyInformation(read_image(folder))
    with pytest.raises(dicomseg.DicomSegError, match="cannot reference") as info:
        dicomseg.write_segmentation(mask, folder, tmp_path / "seg.dcm")
    assert str(folder) in str(info.value)
