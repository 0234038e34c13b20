"""Shared fixtures: a tiny phantom cohort generated once per test session."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MPLBACKEND", "Agg")

from utils import config

SHARED_REFERENCE = config.ROOT.parent / "shared" / "reference"


def tiny_profile(**overrides) -> config.Profile:
    """The smoke profile with six patients (three training, one internal, two external);
    ``overrides`` change any field (tests/synthetic.py's :data:`PROFILE`). The one test
    profile helper."""
    sizes = {"n_training": 3, "n_internal": 1, "n_external": 2}
    return config.with_overrides(config.get_profile("smoke"), **{**sizes, **overrides})


@pytest.fixture(scope="session")
def tiny_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Manifest path of a six-patient phantom cohort (read-only: copy before corrupting)."""
    from utils.cohort.generate import generate_cohort

    out = tmp_path_factory.mktemp("tiny_cohort")
    return generate_cohort(tiny_profile(), out, workers=2, progress=False)


@pytest.fixture
def cohort_copy(tiny_cohort: Path, tmp_path: Path) -> Path:
    """A writable copy of the tiny cohort; returns its manifest path."""
    target = tmp_path / "cohort"
    shutil.copytree(tiny_cohort.parent, target)
    return target / tiny_cohort.name


@pytest.fixture(scope="session")
def eval_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder of a synthetic run for the evaluation tests (read-only; tests/evalrun.py)."""
    from tests.evalrun import make_run

    return make_run(tmp_path_factory.mktemp("synthetic_run"))


@pytest.fixture(scope="session")
def evaluation(eval_run: Path):
    """:func:`utils.evaluation.evaluate.run_evaluation` of ``eval_run`` (do not modify)."""
    from tests.evalrun import evaluate_run

    return evaluate_run(eval_run)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic cohort already preprocessed (tests/synthetic.py), per test module."""
    from tests.synthetic import write_synthetic_cohort

    root = tmp_path_factory.mktemp("synthetic")
    write_synthetic_cohort(root)
    return root


@pytest.fixture(scope="module")
def data(cohort: Path):
    """That cohort's training data (``utils.training.patients.TrainData``) in folder ``run_a``."""
    from tests.synthetic import CFG, PROFILE, paths_under
    from utils.training.patients import prepare_data

    return prepare_data(PROFILE, paths_under(cohort, "run_a"), CFG.tune_fraction)
