"""Tests of the preprocessing cache (utils.preprocessing.cache: verified entries, atomic
writes), its parallel run (utils.preprocessing.run) and CLI (utils.preprocessing.cli), on a
two-patient cohort of test_preprocess's analytic phantom."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from tests.test_preprocess import PARAMS, PROFILE, Exam, make_exam
from utils.cohort.manifest import ManifestError
from utils.config import ROOT, SEQUENCES
from utils.io import sha256_file
from utils.preprocessing import cache, cli, run


def write_cohort(folder: Path, n: int = 2) -> Path:
    """A manifest (docs/CONTRACTS.md columns) of ``n`` synthetic patients."""
    rows = []
    for i in range(n):
        pid = f"P{i + 1:02d}"
        exams = {"pre": Exam(seed=20 + i), "post": Exam(angles_deg=(0, 0, 2.0),
                                                         shift_mm=(3.0, 2.0, 0), seed=40 + i)}
        for timepoint, exam in exams.items():
            images, mask, _ = make_exam(exam)
            (folder / pid).mkdir(parents=True, exist_ok=True)
            sitk.WriteImage(mask, str(folder / pid / f"{timepoint}_mask.nii.gz"), True)
            for seq in SEQUENCES:
                sitk.WriteImage(images[seq], str(folder / pid / f"{timepoint}_{seq}.nii.gz"),
                                True)
                rows.append({"patient_id": pid, "cohort": "training", "centre": "A",
                             "timepoint": timepoint, "sequence": seq,
                             "image_path": f"{pid}/{timepoint}_{seq}.nii.gz",
                             "mask_path": f"{pid}/{timepoint}_mask.nii.gz", "pcr": i % 2})
    table = pd.DataFrame(rows)
    for col in ("cea_pre", "cea_post", "ca199_pre", "ca199_post"):
        table[col] = 1.0
    table["image_sha256"] = [sha256_file(folder / p) for p in table["image_path"]]
    table["mask_sha256"] = [sha256_file(folder / p) for p in table["mask_path"]]
    table.to_csv(folder / "manifest.csv", index=False)
    return folder / "manifest.csv"


@pytest.fixture(scope="module")
def cohort_dir(tmp_path_factory) -> Path:
    return write_cohort(tmp_path_factory.mktemp("cohort")).parent


@pytest.fixture(scope="module")
def cold_cache(cohort_dir, tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    """A serial cold run of the two-patient cohort (shared; tests work on copies)."""
    out = tmp_path_factory.mktemp("cold") / "cache"
    return out, _run(cohort_dir / "manifest.csv", out)


def _copy(cache: Path, target: Path) -> Path:
    shutil.copytree(cache, target)  # copy2: keeps modification times
    return target


def _mtimes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.glob("*.npz")}


def _run(manifest: Path, out: Path, params=PARAMS, workers=1) -> pd.DataFrame:
    return run.run_preprocessing(manifest, out, PROFILE, workers=workers, params=params,
                                 progress=False)


def test_cache_cold_warm_and_parameter_change(cohort_dir, cold_cache, tmp_path):
    manifest, (cold_dir, cold) = cohort_dir / "manifest.csv", cold_cache
    assert list(cold["status"]) == ["ok", "ok"] and not cold["cached"].any()
    assert (cold_dir / "processed.csv").exists() and (cold_dir / "P01_post_to_pre.tfm").exists()
    data = cache.load_cached(cold_dir / "P01.npz")
    assert data["image_pre"].shape == (*PARAMS.roi_zyx, 2) and data["image_pre"].dtype == np.float32
    assert data["mask_post"].dtype == np.uint8 and data["spacing_zyx"].tolist() == [4.0, 3.0, 3.0]
    assert data["meta"]["cache_key"] == cold.loc[0, "cache_key"]
    out = _copy(cold_dir, tmp_path / "cache")
    first = _mtimes(out)

    warm = _run(manifest, out)
    assert warm["cached"].all() and _mtimes(out) == first
    assert warm["cache_key"].tolist() == cold["cache_key"].tolist()
    timings = ["cached", "seconds", "step_seconds"]  # only a computed row has step timings
    assert warm.drop(columns=timings).equals(cold.drop(columns=timings))

    changed = _run(manifest, out, dataclasses.replace(PARAMS, clip_percentiles=(1.0, 99.0)))
    assert not changed["cached"].any()
    assert all(_mtimes(out)[k] != first[k] for k in first)
    assert set(changed["cache_key"]).isdisjoint(cold["cache_key"])


def test_interrupted_write_leaves_no_corrupt_file_and_rerun_completes(cohort_dir, cold_cache,
                                                                      tmp_path, monkeypatch):
    manifest = cohort_dir / "manifest.csv"
    out = _copy(cold_cache[0], tmp_path / "cache")
    for name in ("P01.npz", "P01.json"):  # P01 still to do, P02 done
        (out / name).unlink()
    real = np.lib.format.write_array

    def crash(handle, array, **kwargs):
        handle.write(b"\x93NUMPY partial")
        raise OSError("disk went away")

    monkeypatch.setattr(np.lib.format, "write_array", crash)
    broken = _run(manifest, out).set_index("patient_id")
    assert broken.loc["P01", "status"] == "error" and "patient P01" in broken.loc["P01", "error"]
    assert broken.loc["P02", "status"] == "ok" and broken.loc["P02", "cached"]
    assert not (out / "P01.npz").exists() and not list(out.glob(".*"))
    monkeypatch.setattr(np.lib.format, "write_array", real)

    (out / ".P01.killed1.npz").write_bytes(b"left by a killed worker")  # temp of a kill -9
    good = _run(manifest, out).set_index("patient_id")
    assert (good["status"] == "ok").all() and not good.loc["P01", "cached"]
    assert not list(out.glob(".*"))
    cache.load_cached(out / "P01.npz")

    npz = out / "P02.npz"
    good_bytes = npz.read_bytes()
    npz.write_bytes(good_bytes[: len(good_bytes) // 2])  # final file damaged after the fact
    with pytest.raises(cache.CacheError, match=f"patient P02: cache file {npz}"):
        cache.load_cached(npz)
    (out / "P01_post_to_pre.tfm").write_text("#Insight Transform File V1.0\n")  # truncated
    again = _run(manifest, out).set_index("patient_id")
    assert not again.loc["P02", "cached"] and not again.loc["P01", "cached"]
    assert npz.read_bytes() == good_bytes  # recomputed, byte for byte
    sitk.ReadTransform(str(out / "P01_post_to_pre.tfm"))


def test_identical_inputs_give_byte_identical_cache_files(cohort_dir, cold_cache, tmp_path):
    """No timings or timestamps inside cached files: checksums confirm a cache."""
    again = _run(cohort_dir / "manifest.csv", tmp_path / "again")
    assert not again["cached"].any()
    cold_dir = cold_cache[0]
    for name in ("P01.npz", "P01.json", "P01_post_to_pre.tfm", "P02.npz"):
        assert (tmp_path / "again" / name).read_bytes() == (cold_dir / name).read_bytes(), name
    assert json.loads(again.loc[0, "step_seconds"])["registration_s"] > 0  # timings: table


def test_bad_input_stops_the_run_before_anything_is_written(tmp_path):
    broken_dir = tmp_path / "broken"
    manifest = write_cohort(broken_dir, n=1)
    bad = broken_dir / "P01" / "post_DWI.nii.gz"
    bad.write_bytes(b"not an image")
    with pytest.raises(ManifestError) as error:
        _run(manifest, tmp_path / "cache")
    assert "patient P01" in str(error.value) and str(bad) in str(error.value)
    assert not (tmp_path / "cache").exists()


def test_parallel_run_matches_the_serial_run(cohort_dir, cold_cache, tmp_path):
    parallel = _run(cohort_dir / "manifest.csv", tmp_path / "parallel", workers=2)
    cold_dir, serial = cold_cache
    assert parallel["cache_key"].tolist() == serial["cache_key"].tolist()
    assert not parallel["cached"].any()
    for pid in ("P01", "P02"):
        a = cache.load_cached(cold_dir / f"{pid}.npz")
        b = cache.load_cached(tmp_path / "parallel" / f"{pid}.npz")
        for name in ("image_pre", "image_post", "mask_pre", "mask_post"):
            np.testing.assert_array_equal(a[name], b[name])


def test_cli_passes_its_arguments(monkeypatch, tmp_path):
    seen = {}

    def fake(manifest, out, profile, workers, params, progress=True, placements=None):
        seen.update(manifest=manifest, out=out, profile=profile.name, workers=workers,
                    spacing=params.spacing_zyx, roi=params.roi_zyx, placements=placements)
        return pd.DataFrame({"status": ["ok"]})

    monkeypatch.setattr(cli, "run_preprocessing", fake)
    code = cli.main(["--manifest", "m.csv", "--out", str(tmp_path), "--profile", "smoke",
                     "--workers", "3", "--no-progress", "--spacing", "4,2,2",
                     "--roi", "80,81,80mm", "--localisation", "none"])
    assert code == 0
    assert seen == {"manifest": Path("m.csv"), "out": tmp_path, "profile": "smoke", "workers": 3,
                    "spacing": (4.0, 2.0, 2.0), "roi": (20, 41, 40), "placements": {}}


def test_geometry_options_enter_the_cache_key_and_thin_volumes_are_warned(cohort_dir, cold_cache,
                                                                          tmp_path):
    tall = dataclasses.replace(PARAMS, roi_zyx=(48, 24, 24))  # 192 mm box, 80 mm volume
    table = _run(cohort_dir / "manifest.csv", tmp_path / "tall", params=tall)
    assert set(table["cache_key"]).isdisjoint(cold_cache[1]["cache_key"])
    assert (table["status"] == "ok").all()
    assert "z extent 80 mm is less than half the ROI box's 192 mm" in table.loc[0, "warnings"]
    assert cold_cache[1]["warnings"].fillna("").eq("").all()
    meta = cache.load_cached(tmp_path / "tall" / "P01.npz")["meta"]
    assert meta["params"]["roi_zyx"] == [48, 24, 24] and meta["warnings"]


@pytest.mark.parametrize("module", ["utils.preprocessing", "utils.preprocess"])
def test_the_preprocess_modules_run_the_cli(module):
    """``python -m utils.preprocessing`` and the old ``utils.preprocess`` (README, notebook 01)
    run utils.preprocessing.cli."""
    done = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert "--manifest" in done.stdout and "--registration" in done.stdout


def test_roi_in_millimetres_rounds_up_to_whole_voxels():
    assert cli.roi_voxels("16,40,40", (4.0, 2.0, 2.0)) == (16, 40, 40)
    assert cli.roi_voxels("80x81x80mm", (4.0, 2.0, 2.0)) == (20, 41, 40)
