"""Repository hygiene: pins agree, notebooks are committed clean, outputs are honest."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from utils.config import ROOT

NOTEBOOKS = sorted((ROOT / "notebooks").glob("0*.ipynb"))
MACHINE_PATHS = ("/work/", "/tmp/", "/root/", "/home/", "/Users/")
MAX_OUTPUT_LINES = 100


def pins(lines: list[str]) -> dict[str, str]:
    found = {}
    for line in lines:
        line = line.strip()
        if line and not line.startswith("#") and "==" in line:
            name, version = line.split("==")
            found[name.strip().lower()] = version.strip()
    return found


def test_environment_yml_has_the_same_pins_as_requirements():
    requirements = pins((ROOT / "requirements.txt").read_text(encoding="utf-8").splitlines())
    environment = yaml.safe_load((ROOT / "environment.yml").read_text(encoding="utf-8"))
    pip_section = next(d["pip"] for d in environment["dependencies"] if isinstance(d, dict))
    assert pins(pip_section) == requirements
    assert "python=3.11" in environment["dependencies"]


def test_lock_file_agrees_with_requirements():
    requirements = pins((ROOT / "requirements.txt").read_text(encoding="utf-8").splitlines())
    lock = pins((ROOT / "requirements-lock.txt").read_text(encoding="utf-8").splitlines())
    assert {name: lock.get(name) for name in requirements} == requirements


def test_all_notebooks_are_present():
    names = [p.stem for p in NOTEBOOKS]
    assert names == ["00_data", "01_preprocessing", "02_model", "03_training", "04_evaluation"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_committed_from_one_clean_in_order_run(path: Path):
    notebook = json.loads(path.read_text(encoding="utf-8"))
    code = [c for c in notebook["cells"] if c["cell_type"] == "code"]
    counts = [c["execution_count"] for c in code]
    assert counts == list(range(1, len(code) + 1)), "execution counts not 1..N: hidden state?"
    for cell in code:
        for output in cell["outputs"]:
            assert output["output_type"] != "error", f"stored error: {output.get('ename')}"
            text = "".join(output.get("text", "")) + json.dumps(output.get("data", {}))
            assert len("".join(output.get("text", "")).splitlines()) <= MAX_OUTPUT_LINES
            assert not any(p in text for p in MACHINE_PATHS), f"machine path in {path.name}"
    source = json.dumps([c["source"] for c in notebook["cells"]])
    assert not any(p in source for p in MACHINE_PATHS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_starts_with_parameters_and_ends_with_versions(path: Path):
    code = ["".join(c["source"]) for c in json.loads(path.read_text(encoding="utf-8"))["cells"]
            if c["cell_type"] == "code"]
    assert code[0].startswith("# Parameters")
    assert "RPNET_PROFILE" in code[0]
    assert "versions_report()" in code[-1]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_checks_some_output_with_nbval(path: Path):
    sources = ["".join(c["source"]) for c in json.loads(path.read_text(encoding="utf-8"))["cells"]]
    assert any(re.match(r"#\s*NBVAL_CHECK_OUTPUT", s) for s in sources)


def test_ci_runs_make_test():
    assert "make test" in (ROOT / ".ci" / "run").read_text()


# Files passed between stages: their names are written only in utils/config.py (the file
# contract, docs/CONTRACTS.md); everyone else asks config for the path.
STAGE_FILES = re.compile(r"""["'/{][^"'\n]*(\.npz|\.keras|\.tfm|processed\.csv|predictions\.csv|"""
                         r"""split\.csv|folds\.csv|metrics\.json|training\.csv)["']""")


def test_stage_file_paths_come_only_from_the_config_module():
    offenders = []
    for path in sorted((ROOT / "utils").rglob("*.py")):
        if path.name in ("config.py", "checkpoint.py"):  # the contract; a run's own folder
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            code = line.split("#")[0]
            temporaries = '".*.' in code  # glob patterns of hidden temporary files
            if STAGE_FILES.search(code) and "``" not in code and not temporaries and not (
                    code.strip().startswith(('"""', "'''")) or "glob(" in code):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert offenders == []


def test_notebooks_do_not_join_stage_paths_by_hand():
    offenders = []
    for notebook in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
        for cell in cells:
            source = "".join(cell["source"]) if cell["cell_type"] == "code" else ""
            offenders += [f"{notebook.name}: {line.strip()}" for line in source.splitlines()
                          if STAGE_FILES.search(line) and "paths." in line and " / " in line]
    assert offenders == []
