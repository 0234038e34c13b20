"""Tests of utils.inference.predict: masks back in each exam's original space, end-to-end
prediction, the input checks it shares with manifest validation, CLI."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from tests.conftest import tiny_profile
from utils import config
from utils.cohort import filecheck
from utils.cohort.imageerrors import ImageFileError
from utils.cohort.manifest import exam_files, load_manifest, read_image
from utils.inference import predict as pr
from utils.preprocessing.cache import load_cached
from utils.preprocessing.pipeline import roi_to_original
from utils.preprocessing.run import run_preprocessing
from utils.training.config import TrainConfig
from utils.training.modelcard import read_model_card, score_from_card
from utils.training.patients import processed_ok
from utils.training.runner import train_all


@pytest.fixture(scope="module")
def trained(tiny_cohort: Path, tmp_path_factory: pytest.TempPathFactory
            ) -> tuple[config.Profile, config.Paths]:
    """The tiny cohort preprocessed and a one-step ``full`` model trained on it."""
    root = tmp_path_factory.mktemp("predict")
    prof = tiny_profile()
    paths = config.Paths(tiny_cohort, root / "cache", root / "run", root / "run" / "results")
    table = run_preprocessing(tiny_cohort, paths.cache_dir, prof, workers=2, progress=False)
    assert (table["status"] == "ok").sum() >= 4, table[["patient_id", "error"]]
    train_all(prof, ("full",), TrainConfig(epochs=1, steps_per_epoch=1), paths,
              progress=False)
    return prof, paths


def _ok_patients(paths: config.Paths) -> list[str]:
    return sorted(processed_ok(paths.cache_dir))


def _dice(a: sitk.Image, b: sitk.Image) -> float:
    x, y = sitk.GetArrayViewFromImage(a) > 0, sitk.GetArrayViewFromImage(b) > 0
    return 2 * float((x & y).sum()) / float(x.sum() + y.sum())


def _same_grid(a: sitk.Image, b: sitk.Image) -> bool:
    return (a.GetSize() == b.GetSize() and np.allclose(a.GetSpacing(), b.GetSpacing())
            and np.allclose(a.GetOrigin(), b.GetOrigin())
            and np.allclose(a.GetDirection(), b.GetDirection()))


def _exam(tiny_cohort: Path, patient_id: str) -> dict[str, dict[str, str]]:
    return exam_files(load_manifest(tiny_cohort), patient_id)


def test_ground_truth_roi_mask_maps_back_onto_each_original_exam(tiny_cohort, trained):
    _, paths = trained
    for pid in _ok_patients(paths):
        cached = load_cached(paths.cache_dir / f"{pid}.npz")
        exams = _exam(tiny_cohort, pid)
        for tp in ("pre", "post"):
            back = roi_to_original(cached[f"mask_{tp}"], cached["meta"], tp)
            truth = read_image(exams[tp]["mask"])
            assert _same_grid(back, truth), (pid, tp)
            assert _dice(back, truth) > 0.7, (pid, tp, _dice(back, truth))


def test_predict_patient_end_to_end_returns_masks_in_original_space(tiny_cohort, trained):
    prof, paths = trained
    pid = _ok_patients(paths)[-1]
    exams = _exam(tiny_cohort, pid)
    files = {tp: {s: exams[tp][s] for s in config.SEQUENCES} for tp in ("pre", "post")}
    model = paths.models_dir / "full.keras"
    result = pr.predict_patient(files["pre"], files["post"], model, prof,
                                pre_mask=exams["pre"]["mask"])
    assert 0.0 <= result["pcr_probability"] <= 1.0 and result["roi_source"] == "tumour mask"
    for tp in ("pre", "post"):
        mask = result[f"mask_{tp}"]
        assert mask.GetPixelID() == sitk.sitkUInt8
        assert _same_grid(mask, read_image(exams[tp]["T2W"]))
    card = read_model_card(model)
    expected = score_from_card(np.array([result["pcr_raw"]]), card)[0]
    assert result["pcr_probability"] == pytest.approx(expected)


def test_predict_without_mask_uses_the_centre_or_a_coarse_pass(tiny_cohort, trained):
    prof, paths = trained
    pid = _ok_patients(paths)[0]
    exams = _exam(tiny_cohort, pid)
    files = {tp: {s: exams[tp][s] for s in config.SEQUENCES} for tp in ("pre", "post")}
    model = paths.models_dir / "full.keras"
    coarse = pr.predict_patient(files["pre"], files["post"], model, prof)
    assert coarse["roi_source"] == "coarse sliding-window pass"
    assert len(coarse["roi_center_mm"]) == 3
    assert _same_grid(coarse["mask_post"], read_image(exams["post"]["T2W"]))


def test_predict_without_mask_uses_the_trained_localiser(tiny_cohort, trained):
    """With a localiser beside the model's folder, a new patient needs neither a mask nor a
    centre; the prediction equals the one with the localiser's centre given by hand and the
    ground-truth masks passed too (they are then cropped for scoring only)."""
    from utils.localisation.run import run_localisation

    prof, paths = trained
    table = run_localisation(paths, "smoke", workers=2, progress=False)
    pid = table["patient_id"].iloc[0]
    exams = _exam(tiny_cohort, pid)
    files = {tp: {s: exams[tp][s] for s in config.SEQUENCES} for tp in ("pre", "post")}
    model = paths.models_dir / "full.keras"
    assert pr.default_localiser(model) == paths.localiser_model
    auto = pr.predict_patient(files["pre"], files["post"], model, prof,
                              check_registration=False)
    assert auto["roi_source"] == "localiser" and isinstance(auto["localiser_found"], bool)
    row = table.iloc[0]
    centre = [row["centre_x_mm"], row["centre_y_mm"], row["centre_z_mm"]]
    np.testing.assert_allclose(auto["roi_center_mm"], centre, atol=1e-3)
    masked = pr.predict_patient(files["pre"], files["post"], model, prof, roi_center_mm=centre,
                                pre_mask=exams["pre"]["mask"], post_mask=exams["post"]["mask"],
                                check_registration=False)
    assert masked["roi_source"] == "given centre"
    # the QC box differs in size only (extent vs ROI box); no flag, so the same registration
    assert masked["pcr_raw"] == pytest.approx(auto["pcr_raw"], abs=1e-6)


def test_window_starts_cover_the_axis():
    assert pr.window_starts(16, 16) == [0]
    starts = pr.window_starts(50, 16)
    assert starts[0] == 0 and starts[-1] == 34
    assert all(b - a <= 8 for a, b in itertools.pairwise(starts))


def test_cli_writes_nifti_masks_and_json(tiny_cohort, trained, tmp_path):
    _, paths = trained
    pid = _ok_patients(paths)[0]
    exams = _exam(tiny_cohort, pid)
    truth = read_image(exams["pre"]["mask"])
    index = np.argwhere(sitk.GetArrayViewFromImage(truth) > 0).mean(axis=0)[::-1]
    centre = truth.TransformContinuousIndexToPhysicalPoint([float(v) for v in index])
    args = [f"--{tp}={s}={exams[tp][s]}" for tp in ("pre", "post") for s in config.SEQUENCES]
    code = pr.main([*args, "--model", str(paths.models_dir / "full.keras"), "--out",
                    str(tmp_path / "out"), "--center", ",".join(f"{v:.3f}" for v in centre),
                    "--profile", "smoke"])
    assert code == 0
    summary = json.loads((tmp_path / "out" / "prediction.json").read_text())
    assert 0 <= summary["pcr_probability"] <= 1 and summary["roi_source"] == "given centre"
    assert summary["model"] == "full.keras"  # file names, never machine paths
    assert summary["inputs"]["pre"]["T2W"] == Path(exams["pre"]["T2W"]).name
    assert str(tmp_path) not in (tmp_path / "out" / "prediction.json").read_text()
    mask = sitk.ReadImage(str(tmp_path / "out" / "mask_pre.nii.gz"))
    assert _same_grid(mask, read_image(exams["pre"]["T2W"]))
    assert not list((tmp_path / "out").glob(".*"))  # no temporary files left
    assert not list((tmp_path / "out").glob("*.dcm"))  # NIfTI inputs: no DICOM-SEG


def _centre_arg(truth: sitk.Image) -> str:
    index = np.argwhere(sitk.GetArrayViewFromImage(truth) > 0).mean(axis=0)[::-1]
    centre = truth.TransformContinuousIndexToPhysicalPoint([float(v) for v in index])
    return ",".join(f"{v:.3f}" for v in centre)


def test_dicom_inputs_give_dicom_seg_masks_equal_to_the_nifti_ones(tiny_cohort, trained,
                                                                    tmp_path):
    import highdicom as hd

    from tests.dicom_series import write_dicom_series
    from utils.inference import dicomseg

    _, paths = trained
    pid = _ok_patients(paths)[0]
    exams = _exam(tiny_cohort, pid)
    folders = {}
    for tp, uid in (("pre", "1.2.826.0.1.11"), ("post", "1.2.826.0.1.12")):
        image = sitk.Cast(read_image(exams[tp]["T2W"]), sitk.sitkInt16)  # MR pixels
        folders[tp] = write_dicom_series(tmp_path / f"{tp}_T2W", image, series_uid=uid)
    args = [f"--{tp}=T2W={folders[tp]}" for tp in ("pre", "post")]
    args += [f"--{tp}={s}={exams[tp][s]}" for tp in ("pre", "post") for s in config.SEQUENCES
             if s != "T2W"]
    out = tmp_path / "out"
    assert pr.main([*args, "--model", str(paths.models_dir / "full.keras"), "--out", str(out),
                    "--center", _centre_arg(read_image(exams["pre"]["mask"])),
                    "--profile", "smoke"]) == 0
    for tp in ("pre", "post"):
        nifti = sitk.ReadImage(str(out / f"mask_{tp}.nii.gz"))
        source = read_image(folders[tp])
        assert _same_grid(nifti, source)
        seg_file = out / f"mask_{tp}.dcm"
        np.testing.assert_array_equal(dicomseg.read_segmentation(seg_file, source),
                                      sitk.GetArrayFromImage(nifti))
        seg = hd.seg.segread(seg_file)
        referenced = {uid[2] for uid in seg.get_source_image_uids()}
        assert referenced == {str(ds.SOPInstanceUID)
                              for ds in dicomseg.series_datasets(folders[tp])}


def test_nan_voxels_in_a_nifti_input_are_refused_naming_the_file(tiny_cohort, trained, tmp_path,
                                                                 capsys):
    """ITK reads NaN in NIfTI as 0; prediction refuses the file, as manifest validation does
    (one checker: utils.cohort.filecheck), before anything is preprocessed or written."""
    _, paths = trained
    exams = _exam(tiny_cohort, _ok_patients(paths)[0])
    pixels = sitk.GetArrayFromImage(read_image(exams["post"]["DWI"])).astype(np.float32)
    assert not np.isnan(pixels).any()
    pixels[pixels.shape[0] // 2, :3, :3] = np.nan
    image = sitk.GetImageFromArray(pixels)
    image.CopyInformation(read_image(exams["post"]["DWI"]))
    bad = tmp_path / "post_DWI_nan.nii.gz"
    sitk.WriteImage(image, str(bad), True)
    assert not np.isnan(sitk.GetArrayViewFromImage(sitk.ReadImage(str(bad)))).any()  # ITK: 0
    _, manifest_problems = filecheck.check_file(str(bad), "")
    assert manifest_problems == ["9 NaN or infinite voxel(s)"]

    files = {tp: dict(exams[tp]) for tp in ("pre", "post")}
    files["post"]["DWI"] = str(bad)
    model = paths.models_dir / "full.keras"
    with pytest.raises(ImageFileError, match=f"post DWI: {bad}: 9 NaN or infinite voxel"):
        pr.predict_patient({s: files["pre"][s] for s in config.SEQUENCES},
                           {s: files["post"][s] for s in config.SEQUENCES}, model,
                           roi_center_mm=(0.0, 0.0, 0.0))
    args = [f"--{tp}={s}={files[tp][s]}" for tp in ("pre", "post") for s in config.SEQUENCES]
    code = pr.main([*args, "--model", str(model), "--out", str(tmp_path / "out"),
                    "--center", "0,0,0"])
    assert code == 1 and not (tmp_path / "out").exists()
    error = capsys.readouterr().err
    assert str(bad) in error and "NaN or infinite voxel" in error


def test_inference_modules_import_neither_keras_nor_training():
    """utils.inference.predict, the model card, batch inference and the evaluation's score table
    load without Keras and without the training modules (a fresh process: this one has both)."""
    code = ("import sys, utils.inference.predict, utils.training.modelcard, utils.inference.batch, "
            "utils.evaluation.predictions, utils.evaluation.scoretable; "
            "print(sorted(m for m in ('keras', 'utils.training.fit', 'utils.training.runner', "
            "'utils.training.dataset', 'utils.training.patients') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], cwd=config.ROOT, capture_output=True,
                          text=True, timeout=120, check=True)
    assert done.stdout.strip() == "[]"
