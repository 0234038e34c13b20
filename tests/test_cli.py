"""The pipeline from a terminal: one ``python -m`` command per stage, chained at the smoke
size in fresh processes, each refusing bad input before it writes anything."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from utils.config import ROOT

STAGES = ("utils.cohort", "utils.cohort.validate", "utils.localisation", "utils.preprocessing",
          "utils.training",
          "utils.inference.batch", "utils.inference", "utils.evaluation",
          "utils.manifest", "utils.preprocess", "utils.predict", "utils.train", "utils.evaluate")


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "RPNET_PROFILE": "smoke", "PYTHONHASHSEED": "0"}
    env.pop("RPNET_MANIFEST", None)
    result = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env,
                            capture_output=True, text=True, encoding="utf-8", timeout=900)
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.parametrize("module", STAGES)
def test_every_stage_command_has_help(module: str):
    assert "usage:" in run(module, "--help").stdout


@pytest.fixture(scope="module")
def chain(tiny_cohort: Path, tmp_path_factory) -> dict[str, Path]:
    """Preprocess, train (one short run of the main model) and evaluate the tiny cohort."""
    root = tmp_path_factory.mktemp("chain")
    cache, out = root / "cache", root / "run"
    run("utils.preprocessing", "--manifest", str(tiny_cohort), "--out", str(cache),
        "--profile", "smoke", "--workers", "2", "--no-progress")
    common = ("--profile", "smoke", "--manifest", str(tiny_cohort), "--cache", str(cache),
              "--out", str(out))
    run("utils.training", *common, "--variants", "full", "--seeds", "1", "--epochs", "1",
        "--no-progress")
    run("utils.inference.batch", *common)
    evaluated = run("utils.evaluation", *common, "--n-boot", "200")
    return {"cache": cache, "out": out, "manifest": tiny_cohort, "stdout": evaluated.stdout}


def test_the_chain_writes_every_stage_output(chain: dict):
    out = chain["out"]
    assert (chain["cache"] / "processed.csv").exists()
    assert (out / "models" / "full.keras").exists() and (out / "models" / "full.json").exists()
    predictions = pd.read_csv(out / "results" / "predictions.csv", dtype={"patient_id": str})
    manifest = pd.read_csv(chain["manifest"], dtype={"patient_id": str})
    assert set(predictions["patient_id"]) == set(manifest["patient_id"])
    metrics = json.loads((out / "results" / "metrics.json").read_text())
    assert metrics["meta"]["profile"] == "smoke"
    assert (out / "figures" / "fig04_roc.png").exists()
    assert "| " in chain["stdout"]  # README's results table


def test_training_resumes_instead_of_retraining(chain: dict):
    common = ("--profile", "smoke", "--manifest", str(chain["manifest"]), "--cache",
              str(chain["cache"]), "--out", str(chain["out"]))
    model = chain["out"] / "models" / "full.keras"
    before = model.stat().st_mtime_ns
    run("utils.training", *common, "--variants", "full", "--seeds", "1", "--epochs", "1",
        "--no-progress")
    assert model.stat().st_mtime_ns == before


def test_training_refuses_a_one_class_cohort_before_any_epoch(chain: dict, tmp_path: Path):
    table = pd.read_csv(chain["manifest"], dtype=str)
    table["pcr"] = "0"
    manifest = chain["manifest"].parent / "one_class.csv"
    table.to_csv(manifest, index=False)
    result = run("utils.training", "--profile", "smoke", "--manifest", str(manifest),
                 "--cache", str(chain["cache"]), "--out", str(tmp_path / "run"),
                 "--variants", "full", "--epochs", "1", check=False)
    assert result.returncode == 1
    assert "0 pCR" in result.stderr and "at least 1 of each class" in result.stderr
    assert not (tmp_path / "run" / "models").exists()


def test_training_inference_and_evaluation_name_what_is_missing(tmp_path: Path):
    result = run("utils.training", "--profile", "smoke", "--cache", str(tmp_path / "none"),
                 "--out", str(tmp_path / "run"), "--variants", "nope", check=False)
    assert result.returncode == 1
    assert "unknown variant 'nope'" in result.stderr and "no preprocessed cache" in result.stderr
    result = run("utils.inference.batch", "--profile", "smoke", "--out", str(tmp_path / "run"),
                 check=False)
    assert result.returncode == 1 and "no trained model" in result.stderr
    result = run("utils.evaluation", "--profile", "smoke", "--out", str(tmp_path / "run"),
                 check=False)
    assert result.returncode == 1 and "no predictions" in result.stderr
    assert not (tmp_path / "run").exists()
