"""Predicted masks as DICOM Segmentation objects (highdicom) that reference their source series.

When an exam's reference sequence was read from a DICOM series folder, the prediction's
tumour mask on that exam's grid (:func:`utils.inference.predict.predict_patient`) is also
written as a binary DICOM-SEG: one frame per source slice, in the source's own order, each
frame referencing its source instance, with the source's frame of reference, orientation,
positions and pixel spacing. A radiologist's viewer (OHIF, 3D Slicer, a PACS) shows it over
the series it was computed from.

What is copied from the source series: highdicom copies what the standard requires of an
object in the same study (Patient module: PatientID, PatientName, PatientBirthDate,
PatientSex; General Study module: StudyInstanceUID, StudyID, StudyDate, StudyTime,
AccessionNumber, ReferringPhysicianName) and the references (FrameOfReferenceUID,
SeriesInstanceUID and SOPInstanceUID of every source slice). PatientBirthDate and PatientSex
are type 2, not needed to file or reference the object, and are written empty here. No other
header field of the source (institution, physicians, protocol, device) is copied.
UIDs are derived from the source series UID and the mask's content, so the same prediction
gives the same UIDs.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from utils.io import atomic_path

PathLike = str | os.PathLike
ALGORITHM = "3D RP-Net (Jin et al. 2021 reproduction)"
BLANKED = ("PatientBirthDate", "PatientSex")  # type 2: present, empty


class DicomSegError(ValueError):
    """The mask does not fit the DICOM series it should reference (names the folder)."""


def series_datasets(folder: PathLike) -> list[pydicom.Dataset]:
    """The one series' instances in ``folder`` (as the manifest's reader found them), each
    read with pixel data."""
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder))
    if not files:
        raise DicomSegError(f"{folder}: no DICOM series to reference")
    return [pydicom.dcmread(f) for f in files]


def _frame_indices(mask: sitk.Image, datasets: list[pydicom.Dataset], folder: PathLike
                   ) -> list[int]:
    """The mask's slice index (z) of each source instance, from its ImagePositionPatient."""
    width, height, depth = mask.GetSize()
    indices = []
    for ds in datasets:
        if (int(ds.Rows), int(ds.Columns)) != (height, width):
            raise DicomSegError(f"{folder}: slices are {ds.Rows}x{ds.Columns} pixels but the "
                                f"mask is {height}x{width}: not the series' grid")
        index = mask.TransformPhysicalPointToContinuousIndex(
            [float(v) for v in ds.ImagePositionPatient])
        if max(abs(index[0]), abs(index[1]), abs(index[2] - round(index[2]))) > 0.01 or \
                not 0 <= round(index[2]) < depth:
            raise DicomSegError(f"{folder}: slice {ds.SOPInstanceUID} at "
                                f"{list(ds.ImagePositionPatient)} mm is not a slice of the "
                                f"mask's grid (index {tuple(round(v, 2) for v in index)})")
        indices.append(round(index[2]))
    if sorted(indices) != list(range(depth)):
        raise DicomSegError(f"{folder}: its {len(datasets)} slices do not cover the mask's "
                            f"{depth} slices one to one")
    return indices


def segmentation(mask: sitk.Image, series_folder: PathLike, label: str = "tumour",
                 series_number: int = 901, software_version: str = "1") -> hd.seg.Segmentation:
    """A binary DICOM-SEG of ``mask`` (non-zero = tumour) on the series in ``series_folder``."""
    datasets = series_datasets(series_folder)
    array = sitk.GetArrayFromImage(mask) > 0
    frames = array[_frame_indices(mask, datasets, series_folder)]
    source_uid = str(datasets[0].SeriesInstanceUID)
    digest = hashlib.sha256(np.packbits(frames).tobytes()).hexdigest()
    description = hd.seg.SegmentDescription(
        segment_number=1, segment_label=label,
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Neoplasm,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name=ALGORITHM, version=software_version,
            family=codes.cid7162.ArtificialIntelligence))
    try:
        seg = hd.seg.Segmentation(
            source_images=datasets, pixel_array=frames,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=[description],
            series_instance_uid=generate_uid(entropy_srcs=[source_uid, label, digest, "series"]),
            series_number=series_number,
            sop_instance_uid=generate_uid(entropy_srcs=[source_uid, label, digest, "instance"]),
            instance_number=1, manufacturer="rpnet reproduction package",
            manufacturer_model_name=ALGORITHM, software_versions=software_version,
            device_serial_number="none", content_label="TUMOUR", omit_empty_frames=False)
    except ValueError as error:  # highdicom's checks of the source (e.g. no frame of reference)
        raise DicomSegError(f"{series_folder}: cannot reference this series: {error}") from error
    for keyword in BLANKED:
        setattr(seg, keyword, "")
    return seg


def write_segmentation(mask: sitk.Image, series_folder: PathLike, target: PathLike,
                       label: str = "tumour") -> Path:
    """Write :func:`segmentation` to ``target`` atomically; returns the path."""
    seg = segmentation(mask, series_folder, label)
    with atomic_path(Path(target)) as tmp:
        seg.save_as(tmp)
    return Path(target)


def read_segmentation(seg_file: PathLike, like: sitk.Image) -> np.ndarray:
    """A DICOM-SEG's segment 1 as a (z, y, x) uint8 array on the grid of ``like`` (the source
    series), each frame placed by its position."""
    seg = pydicom.dcmread(seg_file)
    pixels = seg.pixel_array.reshape(-1, int(seg.Rows), int(seg.Columns))
    out = np.zeros(sitk.GetArrayViewFromImage(like).shape, np.uint8)
    for frame, item in zip(pixels, seg.PerFrameFunctionalGroupsSequence, strict=True):
        position = item.PlanePositionSequence[0].ImagePositionPatient
        z = round(like.TransformPhysicalPointToContinuousIndex([float(v) for v in position])[2])
        out[z] = frame
    return out
