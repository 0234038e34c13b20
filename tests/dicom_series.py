"""A synthetic MR DICOM series on disk, one file per slice (SimpleITK's GDCM writer), as a
scanner exports it: study, series and frame-of-reference UIDs, positions, orientation,
spacing, and identifying patient fields that outputs must not spread."""

from __future__ import annotations

from pathlib import Path

import SimpleITK as sitk

IDENTIFYING = {"0010|0010": "Doe^Jane", "0010|0020": "PID-0042", "0010|0030": "19600101",
               "0010|0040": "F", "0008|0080": "General Hospital",
               "0008|0090": "Ref^Doctor", "0008|0050": "ACC123"}


def write_dicom_series(folder: Path, volume: sitk.Image, series_uid: str = "1.2.826.0.1.1",
                       skip: tuple[int, ...] = (), prefix: str = "",
                       identifying: bool = True) -> Path:
    """Write ``volume`` as one DICOM file per slice (MR, with position and orientation);
    slices in ``skip`` are left out (a gap)."""
    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    d = volume.GetDirection()
    orientation = "\\".join(f"{v:.6f}" for v in (d[0], d[3], d[6], d[1], d[4], d[7]))
    for z in set(range(volume.GetDepth())) - set(skip):
        slice_image = volume[:, :, z]
        position = volume.TransformIndexToPhysicalPoint((0, 0, z))
        tags = {"0008|0060": "MR", "0020|000d": "1.2.826.0.1", "0020|000e": series_uid,
                "0020|0052": f"{series_uid}.0", "0008|0018": f"{series_uid}.{z + 1}",
                "0020|0013": str(z + 1), "0020|0032": "\\".join(f"{v:.6f}" for v in position),
                "0020|0037": orientation, "0018|0050": f"{volume.GetSpacing()[2]:g}",
                **(IDENTIFYING if identifying else {})}
        for tag, value in tags.items():
            slice_image.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{prefix}{z:03d}.dcm"))
        writer.Execute(slice_image)
    return folder
