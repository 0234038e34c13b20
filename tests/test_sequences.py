"""The cohort's own sequences: T2W-only and three-sequence cohorts, end to end.

Validation, preprocessing, a smoke training and prediction, each on a manifest derived from
the tiny phantom cohort: one with the DWI rows dropped, one with an ADC map added.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from tests.conftest import tiny_profile
from utils import config
from utils.cohort import manifest as mf
from utils.cohort.validate import validate_manifest
from utils.inference import predict as pr
from utils.preprocessing.cache import load_cached
from utils.preprocessing.run import run_preprocessing
from utils.training.config import TrainConfig
from utils.training.modelcard import read_model_card
from utils.training.runner import train_all


def _copy_cohort(tiny_cohort: Path, target: Path) -> Path:
    shutil.copytree(tiny_cohort.parent, target)
    return target / tiny_cohort.name


def t2w_only(tiny_cohort: Path, target: Path) -> Path:
    manifest = _copy_cohort(tiny_cohort, target)
    table = pd.read_csv(manifest, dtype={"patient_id": str})
    table[table["sequence"] == "T2W"].to_csv(manifest, index=False)
    return manifest


def with_adc(tiny_cohort: Path, target: Path) -> Path:
    """T2W, DWI and an ADC-like map (a decreasing function of DWI, its own file)."""
    manifest = _copy_cohort(tiny_cohort, target)
    table = pd.read_csv(manifest, dtype={"patient_id": str})
    adc_rows = table[table["sequence"] == "DWI"].copy()
    for i, row in adc_rows.iterrows():
        dwi = sitk.Cast(sitk.ReadImage(str(manifest.parent / row["image_path"])),
                        sitk.sitkFloat32)
        adc = sitk.Cast(3000.0 / (1.0 + sitk.Abs(dwi)), sitk.sitkFloat32)
        path = row["image_path"].replace("DWI", "ADC")
        sitk.WriteImage(adc, str(manifest.parent / path), True)
        adc_rows.loc[i, ["sequence", "image_path"]] = ["ADC", path]
    pd.concat([table, adc_rows]).to_csv(manifest, index=False)
    mf.fill_checksums(manifest)
    return manifest


@pytest.fixture(scope="module", params=["t2w_only", "with_adc"])
def cohort(request, tiny_cohort: Path, tmp_path_factory: pytest.TempPathFactory
           ) -> tuple[str, Path, config.Paths]:
    """A derived cohort, preprocessed and a one-step ``full`` model trained on it."""
    root = tmp_path_factory.mktemp(request.param)
    manifest = {"t2w_only": t2w_only, "with_adc": with_adc}[request.param](
        tiny_cohort, root / "cohort")
    assert [p for p in validate_manifest(manifest, workers=1) if not p.warning] == []
    paths = config.Paths(manifest, root / "cache", root / "run", root / "run" / "results")
    table = run_preprocessing(manifest, paths.cache_dir, tiny_profile(), workers=2,
                              progress=False)
    assert (table["status"] == "ok").sum() >= 4, table[["patient_id", "error"]]
    train_all(tiny_profile(), ("full",), TrainConfig(epochs=1, steps_per_epoch=1), paths,
              progress=False)
    return request.param, manifest, paths


EXPECTED = {"t2w_only": ["T2W"], "with_adc": ["T2W", "ADC", "DWI"]}  # reference, then sorted


def test_cache_channels_follow_the_cohort_sequences(cohort):
    name, _, paths = cohort
    table = pd.read_csv(paths.cache_dir / "processed.csv", dtype={"patient_id": str})
    cached = load_cached(paths.cache_dir / f"{table['patient_id'].iloc[0]}.npz")
    assert cached["meta"]["sequences"] == EXPECTED[name]
    assert cached["image_pre"].shape[-1] == len(EXPECTED[name])
    assert set(table["sequences"]) == {" ".join(EXPECTED[name])}


def test_model_card_records_the_sequences_and_prediction_runs(cohort):
    name, manifest, paths = cohort
    model = paths.models_dir / "full.keras"
    card = read_model_card(model)
    assert card["sequences"] == EXPECTED[name]
    assert card["preprocessing"]["sequences"] == EXPECTED[name]
    exams = mf.exam_files(mf.load_manifest(manifest), "EV001")
    files = {tp: {s: exams[tp][s] for s in EXPECTED[name]} for tp in ("pre", "post")}
    result = pr.predict_patient(files["pre"], files["post"], model,
                                pre_mask=exams["pre"]["mask"])
    assert 0.0 <= result["pcr_probability"] <= 1.0
    assert result["mask_pre"].GetSize() == sitk.ReadImage(exams["pre"]["T2W"]).GetSize()


def test_prediction_refuses_another_sequence_set_listing_both(cohort):
    name, manifest, paths = cohort
    exams = mf.exam_files(mf.load_manifest(manifest), "EV001")
    wrong = {"T2W": exams["pre"]["T2W"], "FLAIR": exams["pre"]["T2W"]}
    with pytest.raises(ValueError) as error:
        pr.predict_patient(wrong, wrong, paths.models_dir / "full.keras")
    assert "['FLAIR', 'T2W']" in str(error.value) and str(EXPECTED[name]) in str(error.value)


def test_prediction_cli_takes_sequences_by_name(cohort, tmp_path):
    name, manifest, paths = cohort
    exams = mf.exam_files(mf.load_manifest(manifest), "EV001")
    args = [f"--{tp}={s}={exams[tp][s]}" for tp in ("pre", "post") for s in EXPECTED[name]]
    code = pr.main([*args, "--model", str(paths.models_dir / "full.keras"),
                    "--pre-mask", exams["pre"]["mask"], "--out", str(tmp_path / "out")])
    assert code == 0 and (tmp_path / "out" / "prediction.json").exists()
    extra = [f"--{tp}=FLAIR={exams[tp]['T2W']}" for tp in ("pre", "post")]
    code = pr.main([*args, *extra, "--model", str(paths.models_dir / "full.keras"),
                    "--out", str(tmp_path / "refused")])
    assert code != 0 and not (tmp_path / "refused").exists()


# ---------------------------------------------------------------- validation of sequence sets
def test_an_exam_lacking_one_sequence_is_named(tiny_cohort, tmp_path):
    manifest = with_adc(tiny_cohort, tmp_path / "cohort")
    table = pd.read_csv(manifest, dtype={"patient_id": str})
    drop = (table["patient_id"] == "TR002") & (table["timepoint"] == "post") & (
        table["sequence"] == "ADC")
    table[~drop].to_csv(manifest, index=False)
    found = [str(p) for p in validate_manifest(manifest, check_files=False)]
    assert any("patient TR002" in m and "post exam" in m and "lacks ['ADC']" in m
               for m in found), found


@pytest.mark.parametrize("bad", ["T2 W", "DWI/b800", ""])
def test_sequence_names_must_be_safe(tiny_cohort, tmp_path, bad):
    manifest = _copy_cohort(tiny_cohort, tmp_path / "cohort")
    table = pd.read_csv(manifest, dtype={"patient_id": str})
    table.loc[table["sequence"] == "DWI", "sequence"] = bad
    table.to_csv(manifest, index=False)
    found = [str(p) for p in validate_manifest(manifest, check_files=False)]
    assert any("is not a name made of letters" in m and "row 2" in m for m in found), found


def test_the_reference_sequence_must_be_present(tiny_cohort, tmp_path):
    manifest = _copy_cohort(tiny_cohort, tmp_path / "cohort")
    found = [str(p) for p in validate_manifest(manifest, check_files=False,
                                               reference="ADC")]
    assert any("reference sequence 'ADC' is not among" in m for m in found), found
    assert mf.cohort_sequences(pd.read_csv(manifest)) == ("T2W", "DWI")
    with pytest.raises(ValueError, match="'ADC' is not in"):
        mf.cohort_sequences(pd.read_csv(manifest), "ADC")


def test_a_different_reference_sequence_orders_the_channels(tiny_cohort):
    table = pd.read_csv(tiny_cohort)
    assert mf.cohort_sequences(table, "DWI") == ("DWI", "T2W")
    assert np.all(table["sequence"].isin(["T2W", "DWI"]))
