"""Tests of utils.inference.predict: masks back in each exam's original space, end-to-end prediction, CLI."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from utils import config
from utils.cohort.manifest import exam_files, load_manifest, read_image
from utils.inference import predict as pr
from utils.preprocessing.cache import load_cached, run_preprocessing
from utils.preprocessing.pipeline import roi_to_original
from utils.training import train as tr
from utils.training.dataset import processed_ok
from utils.training.modelcard import read_model_card, score_from_card


def tiny_profile() -> config.Profile:
    """conftest's six-patient profile (3 training, 1 internal, 2 external)."""
    return config.with_overrides(config.get_profile("smoke"), n_training=3, n_internal=1,
                                 n_external=2)


@pytest.fixture(scope="module")
def trained(tiny_cohort: Path, tmp_path_factory: pytest.TempPathFactory
            ) -> tuple[config.Profile, config.Paths]:
    """The tiny cohort preprocessed and a one-step ``full`` model trained on it."""
    root = tmp_path_factory.mktemp("predict")
    prof = tiny_profile()
    paths = config.Paths(tiny_cohort, root / "cache", root / "run", root / "run" / "results")
    table = run_preprocessing(tiny_cohort, paths.cache_dir, prof, workers=2, progress=False)
    assert (table["status"] == "ok").sum() >= 4, table[["patient_id", "error"]]
    tr.train_all(prof, ("full",), tr.TrainConfig(epochs=1, steps_per_epoch=1), paths,
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


def test_inference_modules_import_neither_keras_nor_training():
    """utils.inference.predict, the model card, batch inference and the evaluation's scoring load
    without Keras and without utils.training.train (a fresh process: this one has both)."""
    code = ("import sys, utils.inference.predict, utils.training.modelcard, utils.inference.batch, utils.evaluation.scoring; "
            "print(sorted(m for m in ('keras', 'utils.training.train', 'utils.training.dataset') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], cwd=config.ROOT, capture_output=True,
                          text=True, timeout=120, check=True)
    assert done.stdout.strip() == "[]"
