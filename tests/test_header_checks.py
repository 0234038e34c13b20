"""Header geometry the readers accept silently is refused or warned of, naming the patient
and the file (issue 19 item 8): NIfTI pixdim 0, NaN or negative, a negative MetaImage
spacing, a sheared direction matrix, too few slices; warnings for a NIfTI file without
orientation, a sheared sform, saturated voxels, a tumour beyond the ROI box or at the
volume's edge, and too few training patients per class. An empty post-treatment mask
(complete response) is accepted and preprocessed.
"""

from __future__ import annotations

import gzip
import re
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from tests.conftest import tiny_profile
from utils.cohort import headercheck, manifest, validate
from utils.config import cache_files, processed_csv

from .test_bad_inputs import _image, _pixels, _raw
from .test_bad_inputs import test_bad_input_is_named_and_nothing_is_written as rejected
from .test_manifest import edit, warnings_of


def _nifti(pixdim: tuple[float, float, float] | None = None, codes: tuple[int, int] = (0, 0),
           endian: str = "<", sform: np.ndarray | None = None) -> Callable[[bytes], bytes]:
    """Edit a NIfTI-1 header's pixdim[1..3] (byte 76), qform/sform codes (252) and srow."""
    def change(raw: bytes) -> bytes:
        patched = bytearray(raw)
        if pixdim is not None:
            patched[80:92] = struct.pack(f"{endian}3f", *pixdim)
        patched[252:256] = struct.pack(f"{endian}2h", *codes)
        if sform is not None:
            patched[280:328] = struct.pack(f"{endian}12f", *np.ravel(sform))
        return bytes(patched)
    return change


def _gz(change: Callable[[bytes], bytes]) -> Callable[[bytes], bytes]:
    return lambda raw: gzip.compress(change(raw))


def _mha_field(name: str, edit_values: Callable[[list[float]], list[float]]
               ) -> Callable[[bytes], bytes]:
    """Edit one numeric field of a MetaImage header as text."""
    def change(raw: bytes) -> bytes:
        found = re.search(rb"\n" + name.encode() + rb" = ([^\n]*)\n", raw)
        values = edit_values([float(v) for v in found[1].split()])
        text = " ".join(f"{v:.17g}" for v in values).encode()
        return raw[:found.start(1)] + text + raw[found.end(1):]
    return change


def _sheared(values: list[float]) -> list[float]:
    return [values[0], values[1] + 0.3, *values[2:]]


REJECTED = [
    ("zero NIfTI pixdim", "TR001", _raw("TR001", "pre_DWI", ".nii", _nifti((0.0, 0.0, 0.0))),
     ("pixdim[1..3]) is (0, 0, 0) mm", "as 1 mm")),
    ("NaN NIfTI pixdim, .nii.gz", "TR002",
     _raw("TR002", "post_DWI", ".nii.gz", _gz(_nifti((np.nan, 2.0, 3.0)))),
     ("pixdim[1..3]) is (nan, 2, 3) mm", "positive, finite")),
    ("negative NIfTI pixdim", "TR003",
     _raw("TR003", "pre_DWI", ".nii", _nifti((-2.0, 2.0, 3.0), codes=(1, 1))),
     ("pixdim[1..3]) is (-2, 2, 3) mm",)),
    ("negative MetaImage spacing", "IV001",
     _raw("IV001", "post_DWI", ".mha", _mha_field("ElementSpacing", lambda v: [-v[0], *v[1:]])),
     ("voxel spacing (-", "not positive and finite")),
    ("sheared MetaImage direction", "EV001",
     _raw("EV001", "pre_DWI", ".mha", _mha_field("TransformMatrix", _sheared)),
     ("direction matrix", "is not orthonormal", "sheared")),
    ("one-slice image", "EV002", _image("EV002", "post_DWI", lambda i: i[:, :, :1]),
     ("has 1 slice(s) along z: a 3-D volume needs at least 4",)),
    ("three-slice image", "TR001", _image("TR001", "post_DWI", lambda i: i[:, :, 10:13]),
     ("has 3 slice(s) along z",)),
    ("reference too thin at the profile's spacing", "TR002",
     _image("TR002", "pre_T2W", lambda i: i[:, :, 8:12]),
     ("along z is 2 voxel(s) at the profile's 5 mm spacing: registration needs at least 4",)),
]


@pytest.mark.parametrize("kind, patient, damage, words", REJECTED, ids=[c[0] for c in REJECTED])
def test_bad_header_is_named_and_nothing_is_written(cohort_copy, tmp_path, capsys, kind,
                                                    patient, damage, words):
    rejected(cohort_copy, tmp_path, capsys, kind, patient, damage, words)


def test_big_endian_nifti_header_is_read(tmp_path):
    image = sitk.GetImageFromArray(np.ones((4, 5, 6), np.float32))
    image.SetSpacing((0.5, 0.75, 3.0))
    sitk.WriteImage(image, str(tmp_path / "a.nii"))
    raw = (tmp_path / "a.nii").read_bytes()
    (tmp_path / "b.nii").write_bytes(_swap_nifti1(raw[:348]) + raw[348:])
    little, big = (headercheck.nifti_geometry(tmp_path / n) for n in ("a.nii", "b.nii"))
    assert big is not None and np.allclose(big.pixdim, (0.5, 0.75, 3.0))
    assert (big.qform_code, big.sform_code) == (little.qform_code, little.sform_code)
    assert np.allclose(big.srow, little.srow)


def _swap_nifti1(header: bytes) -> bytes:
    """A NIfTI-1 header's numeric fields in the other byte order (those read here)."""
    out = bytearray(header)
    for start, fmt in ((0, "i"), (76, "8f"), (252, "2h"), (280, "12f")):
        size = struct.calcsize("<" + fmt)
        out[start:start + size] = struct.pack(">" + fmt, *struct.unpack(
            "<" + fmt, header[start:start + size]))
    return bytes(out)


# ---------------------------------------------------------------- warnings


def _warned(cohort: Path, patient: str, name: str, *words: str,
            profile: object = None) -> list[str]:
    found = [str(p) for p in validate.validate_manifest(cohort, workers=1, profile=profile)]
    errors = [m for m in found if not m.startswith("warning: ")]
    assert errors == [], errors
    named = [m for m in found if m.startswith("warning: ") and patient in m and name in m
             and all(w in m for w in words)]
    assert named, f"no warning names {patient}, {name} and {words}: {found}"
    return named


def test_nifti_without_orientation_codes_is_a_warning(cohort_copy):
    name = _raw("TR001", "pre_DWI", ".nii", _nifti(codes=(0, 0)))(cohort_copy)
    _warned(cohort_copy, "TR001", name, "qform_code and sform_code are both 0",
            "axis-aligned LPS")


def test_sheared_nifti_sform_is_a_warning(cohort_copy):
    sform = np.array([[2.0, 0.5, 0, 0], [0, 2.0, 0, 0], [0, 0, 3.0, 0]])
    name = _raw("TR002", "pre_DWI", ".nii", _nifti(codes=(1, 1), sform=sform))(cohort_copy)
    _warned(cohort_copy, "TR002", name, "sform (sform_code 1) is sheared", "qform")


def test_saturated_integer_image_is_a_warning(cohort_copy):
    def saturate(pixels: np.ndarray) -> np.ndarray:
        pixels = np.clip(pixels, 0, None).astype(np.int16)
        pixels[pixels >= np.percentile(pixels, 95)] = 32767
        return pixels
    name = _pixels("IV001", "pre_DWI", saturate)(cohort_copy)
    _warned(cohort_copy, "IV001", name, "of voxels sit at the int16 maximum 32767", "saturated")


def test_tumour_beyond_the_roi_box_and_at_the_edge_are_warnings(cohort_copy):
    small = tiny_profile(roi_zyx=(2, 4, 4))
    _warned(cohort_copy, "EV001", "pre_mask.nii.gz",
            "exceeds the profile's ROI box (10, 10, 10) mm", profile=small)

    def at_edge(pixels: np.ndarray) -> np.ndarray:
        pixels[0, 0, 0] = 1
        return pixels
    name = _pixels("EV002", "post_mask", at_edge)(cohort_copy)
    _warned(cohort_copy, "EV002", name, "mask touches the edge of the volume")


def test_too_few_training_patients_per_class_is_a_warning_and_check_passes(cohort_copy,
                                                                           capsys):
    edit(cohort_copy, lambda t: t.__setitem__("pcr", 1))
    found = warnings_of(cohort_copy)
    assert any("training cohort has 3 pCR and 0 non-pCR" in m and "training would refuse" in m
               for m in found), found
    assert validate.main(["check", str(cohort_copy), "--profile", "smoke"]) == 0
    out = capsys.readouterr().out
    assert "warning: the training cohort has 3 pCR" in out and "OK (6 patients" in out
    assert "warning(s))" in out
    validate.require_valid(cohort_copy)  # warnings do not raise
    assert "warning: the training cohort" in capsys.readouterr().err


def test_loading_prints_a_few_warnings_with_relative_files_and_counts_the_rest(cohort_copy,
                                                                              capsys):
    def at_edge(pixels: np.ndarray) -> np.ndarray:
        pixels[0, 0, 0] = 1
        return pixels
    for patient in ("TR001", "TR002", "IV001", "EV001", "EV002"):
        _pixels(patient, "post_mask", at_edge)(cohort_copy)
    every = validate.validate_manifest(cohort_copy, workers=1)
    assert len(every) > validate.MAX_SHOWN_WARNINGS and all(p.warning for p in every)
    validate.require_valid(cohort_copy, workers=1)
    lines = capsys.readouterr().err.splitlines()
    assert lines[:-1] == [str(p).replace(f"{cohort_copy.parent}/", "")
                          for p in every[:validate.MAX_SHOWN_WARNINGS]]
    assert str(cohort_copy.parent) not in "\n".join(lines)  # files relative to the manifest
    hidden = len(every) - validate.MAX_SHOWN_WARNINGS
    assert lines[-1].startswith(f"... and {hidden} more warning(s)")
    assert f"validate check {cohort_copy.name}" in lines[-1]


# ---------------------------------------------------------------- an empty post mask


def test_empty_post_mask_of_a_complete_response_is_accepted_and_cached(cohort_copy, tmp_path):
    from utils.preprocessing.run import run_preprocessing

    table = pd.read_csv(cohort_copy, dtype={"patient_id": str})
    patient = table.loc[table["cohort"] == "training"].iloc[0]["patient_id"]
    edit(cohort_copy, lambda t: t.__setitem__("pcr", np.where(t["patient_id"] == patient, 1,
                                                               t["pcr"])))
    name = _pixels(patient, "post_mask", lambda a: a * 0)(cohort_copy)
    assert not [m for m in validate.validate_manifest(cohort_copy, workers=1)
                if not m.warning], "an empty post mask must pass check"
    out = tmp_path / "cache"
    result = run_preprocessing(cohort_copy, out, tiny_profile(), workers=1, progress=False)
    row = result.set_index("patient_id").loc[patient]
    assert row["status"] == "ok", row["error"]
    assert int(row["vol_post_vox"]) == 0 and int(row["vol_pre_vox"]) > 0
    cached = np.load(cache_files(out, patient)["npz"])
    assert not cached["mask_post"].any() and cached["mask_pre"].any()
    assert name in manifest.exam_files(manifest.load_manifest(cohort_copy), patient)["post"][
        "mask"]
    assert processed_csv(out).exists()


def test_an_all_zero_post_target_gives_a_finite_loss():
    from utils.model.losses import soft_dice_loss

    target = np.zeros((1, 4, 4, 4, 1), np.float32)
    loss = np.asarray(soft_dice_loss(target, target + 0.01))
    assert np.all(np.isfinite(loss)) and 0 <= float(loss.max()) < 1


# ---------------------------------------------------------------- a failure after check


def test_a_patient_failing_in_preprocessing_leaves_no_cache_entry(cohort_copy, tmp_path):
    """Check only warns of a tumour beyond the ROI box; preprocessing then fails that
    patient alone: no arrays, no transform, no temporary file; its row says why."""
    from utils.preprocessing.run import run_preprocessing

    def oversized(pixels: np.ndarray) -> np.ndarray:
        pixels[:, 10:80, 10:80] = 1
        return pixels
    _pixels("TR003", "pre_mask", oversized)(cohort_copy)
    assert any("TR003" in m and "exceeds the profile's ROI box" in m
               for m in warnings_of(cohort_copy))
    out = tmp_path / "cache"
    table = run_preprocessing(cohort_copy, out, tiny_profile(), workers=1,
                              progress=False).set_index("patient_id")
    assert table.loc["TR003", "status"] == "error"
    assert "does not fit in the ROI box" in table.loc["TR003", "error"]
    failed = cache_files(out, "TR003")
    assert not failed["npz"].exists() and not failed["tfm"].exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "temporary files left"
    listed = pd.read_csv(processed_csv(out)).set_index("patient_id")
    assert listed.loc["TR003", "status"] == "error" and pd.isna(listed.loc["TR003", "cache_file"])
    others = [p for p in table.index if p != "TR003"]
    assert (table.loc[others, "status"] == "ok").all()
    assert all(cache_files(out, p)["npz"].exists() for p in others)


def test_a_write_failing_half_way_leaves_no_entry(cohort_copy, tmp_path, monkeypatch):
    from utils.cohort.manifest import cohort_sequences, load_manifest
    from utils.io import save_npz_atomic
    from utils.preprocessing import run
    from utils.preprocessing.params import PreprocessParams

    def npz_then_fail(pair, paths, row):
        save_npz_atomic(paths["npz"], **pair.arrays())
        raise OSError("disk full")
    monkeypatch.setattr(run, "write_cache_entry", npz_then_fail)
    table = load_manifest(cohort_copy)
    rows = table[table["patient_id"] == "TR001"]
    params = PreprocessParams.from_profile(tiny_profile(), sequences=cohort_sequences(table))
    out = tmp_path / "cache"
    out.mkdir()
    start, key = run.check_cache(rows, params, out)
    assert key is not None
    row = run.compute_to_cache(rows, params, out, start)
    assert row["status"] == "error" and "disk full" in row["error"]
    assert list(out.iterdir()) == []
