"""Every bad input is rejected with a message naming the row, patient and file, before
anything is written.

Each case damages a copy of the tiny phantom cohort (or adds a synthetic image or DICOM
series), then checks (a) that validation names the patient and the file, folder or row,
with the expected words, and (b) that the preprocessing CLI exits non-zero having written
nothing: not in its output folder, not beside the inputs.
"""

from __future__ import annotations

import gzip
import hashlib
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from tests.dicom_series import write_dicom_series
from utils.cohort import imagecheck, imageerrors, manifest
from utils.io import checksum, sha256_file
from utils.preprocessing import cli

from .test_manifest import edit, messages

Damage = Callable[[Path], str]  # damages a cohort copy; returns the name a message must hold


# ---------------------------------------------------------------- helpers


def _file(cohort: Path, patient: str, stem: str, suffix: str = ".nii.gz") -> Path:
    return cohort.parent / patient / f"{stem}{suffix}"


def _point(cohort: Path, patient: str, stem: str, relative: str) -> None:
    """Make the manifest list ``relative`` for ``stem`` (``pre_DWI``, ``post_mask``, ...)."""
    timepoint, what = stem.split("_", 1)

    def change(table: pd.DataFrame) -> None:
        rows = (table["patient_id"] == patient) & (table["timepoint"] == timepoint)
        if what == "mask":
            table.loc[rows, "mask_path"] = relative
        else:
            table.loc[rows & (table["sequence"] == what), "image_path"] = relative
    edit(cohort, change)


def _replace(cohort: Path, patient: str, stem: str, image: sitk.Image,
             suffix: str = ".nii.gz") -> str:
    """Write ``image`` as the patient's ``stem`` file, list it, refresh the checksums."""
    target = _file(cohort, patient, stem, suffix)
    sitk.WriteImage(image, str(target), suffix.endswith(".gz"))
    _point(cohort, patient, stem, f"{patient}/{target.name}")
    manifest.fill_checksums(cohort)
    return target.name


def _original(cohort: Path, patient: str, stem: str) -> sitk.Image:
    return manifest.read_image(_file(cohort, patient, stem))


def _pixels(patient: str, stem: str, change: Callable[[np.ndarray], np.ndarray]) -> Damage:
    """Damage: change the voxel values of one file (geometry kept)."""
    def damage(cohort: Path) -> str:
        image = _original(cohort, patient, stem)
        changed = sitk.GetImageFromArray(change(sitk.GetArrayFromImage(image)))
        changed.CopyInformation(image)
        return _replace(cohort, patient, stem, changed)
    return damage


def _image(patient: str, stem: str, make: Callable[[sitk.Image], sitk.Image]) -> Damage:
    """Damage: replace one file by an image made from it."""
    def damage(cohort: Path) -> str:
        return _replace(cohort, patient, stem, make(_original(cohort, patient, stem)))
    return damage


def _raw(patient: str, stem: str, suffix: str, change: Callable[[bytes], bytes]) -> Damage:
    """Damage: write one file uncompressed in another format, then edit its bytes."""
    def damage(cohort: Path) -> str:
        name = _replace(cohort, patient, stem, _original(cohort, patient, stem),
                        suffix.removesuffix(".gz"))
        plain = _file(cohort, patient, stem, suffix.removesuffix(".gz"))
        data = change(plain.read_bytes())
        if suffix.endswith(".gz"):
            plain.unlink()
            name = f"{name}.gz"
            _point(cohort, patient, stem, f"{patient}/{name}")
        _file(cohort, patient, stem, suffix).write_bytes(data)
        manifest.fill_checksums(cohort)
        return name
    return damage


def _geometry(patient: str, stem: str, change: Callable[[sitk.Image], None]) -> Damage:
    def make(image: sitk.Image) -> sitk.Image:
        change(image)
        return image
    return _image(patient, stem, make)


def _table(change: Callable[[pd.DataFrame], None], name: str = "row ") -> Damage:
    """Damage: edit the manifest table only."""
    def damage(cohort: Path) -> str:
        edit(cohort, change)
        return name
    return damage


def _set(patient: str, column: str, value: object) -> Callable[[pd.DataFrame], None]:
    def change(table: pd.DataFrame) -> None:
        table[column] = table[column].astype(object)
        table.loc[table["patient_id"] == patient, column] = value
    return change


def _rename(old: str, new: str) -> Callable[[pd.DataFrame], None]:
    return lambda t: t.replace({"patient_id": {old: new}}, inplace=True)


def _dicom(patient: str, stem: str, fill: Callable[[Path, sitk.Image], None]) -> Damage:
    """Damage: replace one image by a folder that ``fill`` writes (from that image)."""
    def damage(cohort: Path) -> str:
        folder = cohort.parent / patient / f"{stem}_dicom"
        folder.mkdir()
        fill(folder, _original(cohort, patient, stem))
        _point(cohort, patient, stem, f"{patient}/{folder.name}")
        manifest.fill_checksums(cohort)
        return folder.name
    return damage


# ---------------------------------------------------------------- damages of bytes


def _missing(cohort: Path) -> str:
    _file(cohort, "TR002", "post_DWI").unlink()
    return "post_DWI.nii.gz"


def _flipped_byte(cohort: Path) -> str:
    victim = _file(cohort, "TR003", "pre_DWI")
    raw = bytearray(gzip.decompress(victim.read_bytes()))
    raw[-1] ^= 1
    victim.write_bytes(gzip.compress(bytes(raw)))
    return victim.name


def _garbage(cohort: Path) -> str:
    _file(cohort, "TR001", "pre_DWI").write_bytes(b"this is not an image\n" * 300)
    manifest.fill_checksums(cohort)
    return "pre_DWI.nii.gz"


def _truncated_gzip(cohort: Path) -> str:
    victim = _file(cohort, "IV001", "pre_T2W")
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    manifest.fill_checksums(cohort)
    return victim.name


def _huge_dims(raw: bytes) -> bytes:
    """A NIfTI-1 header declaring 4000 x 4000 x 4000 voxels (dim[] at byte 40)."""
    patched = bytearray(raw)
    patched[40:56] = np.array([3, 4000, 4000, 4000, 1, 1, 1, 1], "<i2").tobytes()
    return bytes(patched)


def _text_file_folder(folder: Path, image: sitk.Image) -> None:
    (folder / "notes.txt").write_text("not DICOM\n")


def _missing_slice(folder: Path, image: sitk.Image) -> None:
    write_dicom_series(folder, image, skip=(10,))


def _two_series(folder: Path, image: sitk.Image) -> None:
    write_dicom_series(folder, image, "1.2.826.0.1.1", prefix="a")
    write_dicom_series(folder, image, "1.2.826.0.1.2", prefix="b")


def _same_file_two_sequences(table: pd.DataFrame) -> None:
    rows = (table["patient_id"] == "TR003") & (table["timepoint"] == "pre")
    t2w = table[rows & (table["sequence"] == "T2W")].iloc[0]
    dwi = rows & (table["sequence"] == "DWI")
    table.loc[dwi, "image_path"] = t2w["image_path"]
    table.loc[dwi, "image_sha256"] = t2w["image_sha256"]


def _copy_across_patients(cohort: Path) -> str:
    shutil.copyfile(_file(cohort, "TR001", "pre_DWI"), _file(cohort, "IV001", "pre_DWI"))
    manifest.fill_checksums(cohort)
    return "IV001/pre_DWI.nii.gz"


def _one_voxel(value: float, dtype: type = np.float32) -> Callable[[np.ndarray], np.ndarray]:
    def change(pixels: np.ndarray) -> np.ndarray:
        pixels = pixels.astype(dtype)
        pixels[3, 10, 10] = value
        return pixels
    return change


def _in_mask(value: float, dtype: type) -> Callable[[np.ndarray], np.ndarray]:
    def change(pixels: np.ndarray) -> np.ndarray:
        pixels = pixels.astype(dtype)
        pixels[tuple(np.argwhere(pixels > 0)[0])] = value
        return pixels
    return change


def _duplicate_row(table: pd.DataFrame) -> None:
    table.loc[len(table)] = table[table["patient_id"] == "EV001"].iloc[0]


def _drop_post(table: pd.DataFrame) -> None:
    table.drop(table.index[(table["patient_id"] == "EV002") & (table["timepoint"] == "post")],
               inplace=True)


def _move(offset: float) -> Callable[[sitk.Image], None]:
    return lambda m: m.SetOrigin([o + offset for o in m.GetOrigin()])


# kind, patient, damage, words the message must hold
CASES: list[tuple[str, str, Damage, tuple[str, ...]]] = [
    ("missing file", "TR002", _missing, ("does not exist",)),
    ("checksum mismatch", "TR003", _flipped_byte, ("sha256 does not match",)),
    ("garbage bytes", "TR001", _garbage, ("not an image format SimpleITK can read", "ITK:")),
    ("truncated .nii.gz", "IV001", _truncated_gzip, ("unreadable or truncated",)),
    ("short uncompressed .nii", "TR003", _raw("TR003", "post_DWI", ".nii", lambda b: b[:-999]),
     ("truncated image data",)),
    ("complete gzip, short data", "IV001",
     _raw("IV001", "pre_DWI", ".nii.gz", lambda b: gzip.compress(b[:-999])),
     ("truncated image data",)),
    ("short .mha", "EV001", _raw("EV001", "pre_DWI", ".mha", lambda b: b[:-999]),
     ("truncated image data",)),
    ("short raw .nrrd", "EV001", _raw("EV001", "post_DWI", ".nrrd", lambda b: b[:-999]),
     ("truncated image data",)),
    ("huge declared size", "EV002", _raw("EV002", "post_DWI", ".nii", _huge_dims),
     ("4000 x 4000 x 4000", "refused before reading")),
    ("NaN voxel", "TR001", _pixels("TR001", "post_DWI", _one_voxel(np.nan)),
     ("1 NaN or infinite voxel",)),
    ("inf voxel", "TR002", _pixels("TR002", "pre_DWI", _one_voxel(np.inf)),
     ("1 NaN or infinite voxel",)),
    ("2-D image", "TR002", _image("TR002", "post_DWI", lambda i: i[:, :, 5]),
     ("2-D image", "expected a 3-D volume")),
    ("4-D image", "TR003", _image("TR003", "post_DWI", lambda i: sitk.JoinSeries([i, i])),
     ("4-D image",)),
    ("vector image", "IV001", _image("IV001", "post_DWI", lambda i: sitk.Compose([i, i, i])),
     ("vector image with 3 components",)),
    ("all-zero image", "EV001", _pixels("EV001", "pre_DWI", lambda a: a * 0),
     ("all zeros",)),
    ("constant image", "EV002", _pixels("EV002", "pre_DWI", lambda a: a * 0 + 7),
     ("constant (every voxel is 7)",)),
    ("mask with label 2", "TR001", _pixels("TR001", "pre_mask", _in_mask(2, np.uint8)),
     ("mask has labels [0, 1, 2]",)),
    ("soft float mask", "TR002", _pixels("TR002", "post_mask", _in_mask(0.5, np.float32)),
     ("non-binary values (e.g. 0.5)",)),
    ("NaN in mask", "TR003", _pixels("TR003", "pre_mask", _in_mask(np.nan, np.float32)),
     ("NaN or infinite",)),
    ("empty pre-treatment mask", "IV001", _pixels("IV001", "pre_mask", lambda a: a * 0),
     ("pre-treatment mask is empty",)),
    ("mask of another size", "EV001", _image("EV001", "pre_mask", lambda m: m[:, :, :-2]),
     ("mask size",)),
    ("mask of another spacing", "EV002",
     _geometry("EV002", "pre_mask", lambda m: m.SetSpacing([s * 1.5 for s in m.GetSpacing()])),
     ("mask spacing",)),
    ("mask of another origin", "TR001", _geometry("TR001", "post_mask", _move(5.0)),
     ("mask origin",)),
    ("image duplicated across patients", "IV001", _copy_across_patients,
     ("same image", "TR001", "TR001/pre_DWI.nii.gz", "one scan under two patients")),
    ("same file under two sequences", "TR003", _table(_same_file_two_sequences,
                                                      "pre_T2W.nii.gz"),
     ("same image", "two sequences")),
    ("ids differing by case", "tr001", _table(_rename("IV001", "tr001"), "rows"),
     ("differ only by case", "TR001")),
    ("trailing space in id", "IV001 ", _table(_rename("IV001", "IV001 ")), ("safe file name",)),
    ("unsafe id", "../evil", _table(_rename("TR001", "../evil")), ("safe file name",)),
    ("non-finite marker", "TR002", _table(_set("TR002", "cea_post", "inf")),
     ("cea_post", "finite number")),
    ("negative marker", "EV001", _table(_set("EV001", "ca199_pre", -1.0)),
     ("ca199_pre -1", ">= 0")),
    ("pcr 2", "TR003", _table(_set("TR003", "pcr", 2)), ("pcr 2", "not 0 or 1")),
    ("unknown cohort", "EV002", _table(_set("EV002", "cohort", "testing")),
     ("cohort 'testing'",)),
    ("empty checksum cell", "TR001", _table(_set("TR001", "mask_sha256", "")),
     ("empty mask_sha256",)),
    ("empty image_path cell", "TR002", _table(_set("TR002", "image_path", "")),
     ("empty image_path",)),
    ("empty mask_path cell", "IV001", _table(_set("IV001", "mask_path", "")),
     ("empty mask_path",)),
    ("duplicate row", "EV001", _table(_duplicate_row), ("duplicate row",)),
    ("missing post exam", "EV002", _table(_drop_post, ""), ("no post-treatment exam",)),
    ("DICOM folder with a missing slice", "EV001",
     _dicom("EV001", "pre_T2W", _missing_slice),
     ("slice spacing varies", "mm between files 009.dcm and 011.dcm", "missing slice")),
    ("empty folder", "TR002", _dicom("TR002", "pre_T2W", lambda f, i: None),
     ("no DICOM series",)),
    ("folder without DICOM", "TR003", _dicom("TR003", "post_T2W", _text_file_folder),
     ("no DICOM series",)),
    ("folder with two series", "IV001", _dicom("IV001", "post_T2W", _two_series),
     ("2 DICOM series",)),
    ("sequence outside the reference's field of view", "TR002",
     _geometry("TR002", "pre_DWI", _move(2000.0)), ("pre DWI does not overlap the T2W",)),
    ("unsafe sequence name", "TR003", _table(_set("TR003", "sequence", "T2 W")),
     ("is not a name made of letters",)),
]


def _tree(folder: Path) -> set[Path]:
    return set(folder.rglob("*"))


@pytest.mark.parametrize("kind, patient, damage, words", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_named_and_nothing_is_written(cohort_copy, tmp_path, capsys, kind,
                                                   patient, damage, words):
    name = damage(cohort_copy)
    found = messages(cohort_copy)
    named = [m for m in found if patient in m and name in m and all(w in m for w in words)]
    assert named, f"{kind}: no problem names {patient!r}, {name!r} and {words}: {found}"

    before, out = _tree(cohort_copy.parent), tmp_path / "out"
    code = cli.main(["--manifest", str(cohort_copy), "--out", str(out),
                     "--profile", "smoke", "--workers", "1", "--no-progress"])
    assert code != 0
    assert not out.exists() or not any(out.iterdir())
    assert _tree(cohort_copy.parent) == before
    assert patient.strip() in capsys.readouterr().err


def test_at_least_thirty_kinds_of_bad_input_are_covered():
    assert len({kind for kind, *_ in CASES}) >= 30


# ---------------------------------------------------------------- accepted inputs


def test_mask_with_labels_0_and_255_is_accepted(cohort_copy):
    _pixels("TR001", "pre_mask", lambda a: (a > 0).astype(np.uint8) * 255)(cohort_copy)
    assert messages(cohort_copy) == []


def test_a_valid_dicom_folder_hashes_and_validates(cohort_copy):
    folder_name = _dicom("TR002", "pre_T2W", lambda f, i: write_dicom_series(f, i))(cohort_copy)
    folder = cohort_copy.parent / "TR002" / folder_name
    table = pd.read_csv(cohort_copy, dtype=str)
    listed = table.loc[table["image_path"] == f"TR002/{folder_name}", "image_sha256"]
    assert list(listed) == [checksum(folder)]
    assert messages(cohort_copy) == []
    image = manifest.read_image(folder)
    original = manifest.read_image(cohort_copy.parent / "TR002" / "pre_T2W.nii.gz")
    assert np.array_equal(sitk.GetArrayViewFromImage(image),
                          sitk.GetArrayViewFromImage(original))

    victim = folder / "005.dcm"
    victim.write_bytes(victim.read_bytes()[:-2] + b"\x01\x00")
    assert checksum(folder) != listed.iloc[0]
    found = messages(cohort_copy)
    assert found and all("TR002" in m and folder_name in m and "sha256" in m for m in found)


def test_folder_checksum_is_the_documented_one(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "b.dcm").write_bytes(b"slice b")
    (tmp_path / "sub" / "a.dcm").write_bytes(b"slice a")
    (tmp_path / ".DS_Store").write_bytes(b"hidden")
    lines = sorted(f"{name}\t{sha256_file(tmp_path / name)}\n" for name in ("b.dcm", "sub/a.dcm"))
    assert checksum(tmp_path) == hashlib.sha256("".join(lines).encode()).hexdigest()
    assert checksum(tmp_path / "b.dcm") == hashlib.sha256(b"slice b").hexdigest()
    (tmp_path / "b.dcm").rename(tmp_path / "c.dcm")
    assert checksum(tmp_path) != hashlib.sha256("".join(lines).encode()).hexdigest()


# ---------------------------------------------------------------- helpers in plain words


@pytest.mark.parametrize("itk_text, plain", [
    ("Exception thrown in SimpleITK ImageFileReader_Execute: x.cxx:99:\nsitk::ERROR: Unable "
     "to determine ImageIO reader for \"a.nii\"", "not an image format SimpleITK can read"),
    ("itk::ERROR: Could not create IO object for reading file a.xyz", "not an image format"),
    ("sitk::ERROR: The file \"a.nii\" does not exist.", "cannot open file"),
    ("ITK ERROR: NiftiImageIO: gzread failed: unexpected end of file", "truncated or corrupt"),
    ("All samples map outside moving image buffer", "the two exams do not overlap"),
    ("ITK ERROR: MattesMutualInformation: Joint PDF summed to zero", "no overlapping intensities"),
])
def test_itk_errors_are_translated_keeping_the_original(itk_text, plain):
    text = imageerrors.plain_itk_error(RuntimeError(itk_text))
    assert text.startswith(plain) and "(ITK: " in text and "Exception thrown" not in text


def test_voxel_limit_is_configurable(tmp_path, monkeypatch):
    path = tmp_path / "small.nrrd"
    sitk.WriteImage(sitk.Image([10, 10, 10], sitk.sitkInt16) + 1, str(path))
    assert manifest.read_image(path).GetSize() == (10, 10, 10)
    with pytest.raises(imageerrors.ImageFileError, match="1,000 voxels, more than the limit"):
        manifest.read_image(path, max_voxels=999)
    monkeypatch.setenv(imagecheck.MAX_VOXELS_ENV, "999")
    with pytest.raises(imageerrors.ImageFileError, match=imagecheck.MAX_VOXELS_ENV):
        manifest.read_image(path)


@pytest.mark.parametrize("name, compress, data_file", [
    ("a.mha", True, "a.mha"), ("a.nrrd", True, "a.nrrd"), ("a.mhd", False, "a.raw"),
    ("a.nii.gz", True, "a.nii.gz"), ("a.mhd", True, "a.zraw")])
def test_short_data_is_refused_in_every_format(tmp_path, name, compress, data_file):
    image = sitk.GetImageFromArray(np.arange(20 * 30 * 40, dtype=np.float32).reshape(20, 30, 40))
    sitk.WriteImage(image, str(tmp_path / name), compress)
    assert imagecheck.inspect_file(tmp_path / name).size == (40, 30, 20)
    victim = tmp_path / data_file
    victim.write_bytes(victim.read_bytes()[:-64])
    with pytest.raises(imageerrors.ImageFileError, match="truncated"):
        manifest.read_image(tmp_path / name)
