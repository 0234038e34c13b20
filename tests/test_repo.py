"""Repository hygiene: pins agree, notebooks are committed clean, outputs are honest."""

from __future__ import annotations

import json
import os
import re
import subprocess
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


def test_test_requirements_are_pinned_as_in_the_lock_file():
    test = pins((ROOT / "requirements-test.txt").read_text(encoding="utf-8").splitlines())
    lock = pins((ROOT / "requirements-lock.txt").read_text(encoding="utf-8").splitlines())
    assert test.get("pyyaml") == lock["pyyaml"]  # this module reads environment.yml with it
    assert {name: lock[name] for name in test if name in lock} == {
        name: version for name, version in test.items() if name in lock}


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


# --------------------------------------------------------------------------- stored notebooks
MAX_NOTEBOOK_BYTES = 1_000_000  # embedded images kept small (JPEG for MRI montages in 00)
# what .jupyter/nbconvert_clean.py keeps: cell tags; the kernelspec and the language's name
KEPT_CELL_METADATA = {"tags"}
KEPT_NOTEBOOK_METADATA = {"kernelspec", "language_info"}


def test_reproduce_writes_notebooks_without_volatile_metadata():
    """The nbconvert config ``make reproduce`` passes drops timestamps, keeps tags, outputs
    and the kernelspec (its preprocessors, run on an executed notebook in memory)."""
    import nbformat
    from nbconvert.exporters import NotebookExporter
    from traitlets.config import PyFileConfigLoader

    config_file = ROOT / ".jupyter" / "nbconvert_clean.py"
    assert f"--config {config_file.relative_to(ROOT)}" in (ROOT / "Makefile").read_text()
    config = PyFileConfigLoader(config_file.name, str(config_file.parent)).load_config()
    assert config.ExecutePreprocessor.record_timing is False
    cell = nbformat.v4.new_code_cell("1 + 1", execution_count=1, metadata={
        "tags": ["keep"], "execution": {"iopub.status.busy": "2026-01-01T00:00:00Z"},
        "scrolled": True}, outputs=[nbformat.v4.new_output("execute_result", {"text/plain": "2"},
                                                          execution_count=1)])
    notebook = nbformat.v4.new_notebook(cells=[cell], metadata={
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python", "version": "3.11.7"}})
    exporter = NotebookExporter(config=config)
    exporter.register_preprocessor("nbconvert.preprocessors.ClearOutputPreprocessor")  # off
    written = nbformat.reads(exporter.from_notebook_node(notebook)[0], as_version=4)
    assert written.cells[0].metadata == {"tags": ["keep"]}
    assert written.cells[0].outputs == notebook.cells[0].outputs
    assert written.metadata == {"kernelspec": notebook.metadata.kernelspec,
                                "language_info": {"name": "python"}}


def _saved_by_jupyterlab(path: Path) -> dict:
    """A stored notebook as JupyterLab saves it after a live run of ``make lab``: execution
    timestamps and UI state on every code cell, widget state, the kernel's language_info."""
    notebook = json.loads(path.read_text(encoding="utf-8"))
    for cell in (c for c in notebook["cells"] if c["cell_type"] == "code"):
        cell["metadata"].update(execution={"iopub.execute_input": "2026-12-07T10:00:00Z",
                                           "shell.execute_reply": "2026-12-07T10:00:01Z"},
                                scrolled=True, collapsed=False)
    notebook["metadata"].update(
        widgets={"application/vnd.jupyter.widget-state+json": {"state": {}, "version_major": 2}},
        language_info={"codemirror_mode": {"name": "ipython", "version": 3},
                       "file_extension": ".py", "name": "python", "version": "3.11.9"},
        kernelspec={"display_name": "Python 3", "language": "python", "name": "python3"})
    code = next(c for c in notebook["cells"] if c["cell_type"] == "code")
    code["outputs"].append({"output_type": "display_data", "metadata": {}, "data": {  # tqdm
        "application/vnd.jupyter.widget-view+json": {"model_id": "7152c2", "version_major": 2,
                                                     "version_minor": 0},
        "text/plain": ["  0%|          | 0/5"]}})
    return notebook


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_saving_from_jupyterlab_leaves_the_stored_notebook_unchanged(path: Path):
    """``make lab``'s pre-save hook (.jupyter/jupyter_server_config.py) cleans a save as
    ``make reproduce`` writes it: re-saving unchanged outputs gives the committed file."""
    import nbformat
    from traitlets.config import Config

    server_config = ROOT / ".jupyter" / "jupyter_server_config.py"
    assert f"--config={server_config.relative_to(ROOT)}" in (ROOT / "Makefile").read_text()
    config = Config()
    namespace = {"c": config, "__file__": str(server_config)}
    exec(server_config.read_text(encoding="utf-8"), namespace)
    model = {"type": "notebook", "content": _saved_by_jupyterlab(path)}  # JSON, as sent
    config.FileContentsManager.pre_save_hook(model=model, path=path.name,
                                             contents_manager=None)
    assert nbformat.writes(nbformat.from_dict(model["content"])) == nbformat.writes(
        nbformat.reads(path.read_text(encoding="utf-8"), as_version=4))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_holds_no_execution_timestamps_or_volatile_metadata(path: Path):
    """``make reproduce`` strips them (.jupyter/nbconvert_clean.py); so does every commit."""
    notebook = json.loads(path.read_text(encoding="utf-8"))
    volatile = {f"cell {i}: {key}" for i, cell in enumerate(notebook["cells"])
                for key in cell.get("metadata", {}) if key not in KEPT_CELL_METADATA}
    assert sorted(volatile) == [], "execution timestamps or other cell metadata"
    assert set(notebook["metadata"]) <= KEPT_NOTEBOOK_METADATA
    assert notebook["metadata"]["kernelspec"]["name"] == "python3"
    assert notebook["metadata"].get("language_info", {"name": "python"}) == {"name": "python"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_small(path: Path):
    assert path.stat().st_size <= MAX_NOTEBOOK_BYTES, f"{path.name}: large embedded outputs"


# Numbers in a notebook's prose must be ones its stored outputs or results/ show. Allowed
# without evidence, and only these: numbers in a sentence that cites a source (the paper, the
# authors' release, a reference) and says nothing of this package's own runs; years; small
# counts and list numbers (0 to 10); notebook numbers (01, 03); dimensions (3D); and the
# method's constants below.
CITING = re.compile(r"et al|\bpaper|authors|\brelease|published|\bpROC\b|MedPy|Nat Commun")
OURS = re.compile(r"\bphantom|\bhere\b|this (package|notebook|one|run)|\bwe\b", re.I)
METHOD_CONSTANTS = {
    "95": "the 95% CI level and the HD95 percentile",
    "1.96": "the normal quantile of a 95% CI",
    "3.29": "(p95 - p5) / 3.29: the robust SD of a normal distribution",
    "0.69": "ln 2, the pCR loss of a zero-initialised sigmoid unit",
}
PROSE_NUMBER = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?)(?:st|nd|rd|th|D)?(?![\w])")
ANY_NUMBER = re.compile(r"(?<![\d.])\d+(?:\.\d+)?")


def prose_sentences(markdown: str) -> list[str]:
    """A markdown cell's sentences, without code (fenced or inline) and link targets."""
    text = re.sub(r"```.*?```", " ", markdown, flags=re.S)
    text = re.sub(r"`[^`]*`", " ", text)
    text = re.sub(r"\]\([^)]*\)", "]", text)
    text = re.sub(r"\b(et al|e\.g|i\.e|cf|vs)\.", r"\1", text)
    return [s for s in re.split(r"(?<=[.!?;])\s+|\n\s*\n", text) if s.strip()]


def quoted_numbers(sentence: str) -> list[str]:
    """The numbers a sentence quotes that need evidence (see the allow-list above)."""
    if CITING.search(sentence) and not OURS.search(sentence):
        return []
    found = []
    for match in PROSE_NUMBER.finditer(sentence):
        number, token = match.group(1), match.group(0)
        small = "." not in number and int(number) <= 10
        notebook = len(number) == 2 and number.startswith("0")
        year = "." not in number and 1900 <= int(number) < 2100
        if not (small or notebook or year or token.endswith("D")
                or number in METHOD_CONSTANTS):
            found.append(number)
    return found


def output_text(notebook: dict) -> str:
    parts = []
    for cell in notebook["cells"]:
        for output in cell.get("outputs", []):
            parts.append("".join(output.get("text", "")))
            parts.extend("".join(output.get("data", {}).get(kind, ""))
                         for kind in ("text/plain", "text/html", "text/markdown"))
    return "\n".join(parts)


# results/ tables that prose may quote: summaries, not per-patient or per-threshold rows
# (those hold so many numbers that any rounded value would appear in them)
PER_ROW_TABLES = {"predictions.csv", "segmentation_per_patient.csv", "split.csv", "folds.csv",
                  "performance_all_thresholds.csv"}


def results_text() -> str:
    files = [p for p in sorted((ROOT / "results").glob("*.csv")) if p.name not in PER_ROW_TABLES]
    files.append(ROOT / "results" / "metrics.json")
    return "\n".join(p.read_text(encoding="utf-8") for p in files if p.exists())


def shown(number: str, evidence: list[float]) -> bool:
    """True when some evidence value reads as ``number`` at its precision (0.94 for 0.9412;
    integers exactly)."""
    decimals = len(number.split(".")[1]) if "." in number else 0
    value = float(number)
    if decimals == 0:
        return value in evidence
    return any(abs(round(e, decimals) - value) < 10 ** -(decimals + 3) for e in evidence)


@pytest.fixture(scope="module")
def results_numbers() -> list[float]:
    return [float(n) for n in ANY_NUMBER.findall(results_text())]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_numbers_in_the_prose_are_shown_by_the_outputs(path: Path, results_numbers):
    notebook = json.loads(path.read_text(encoding="utf-8"))
    evidence = [float(n) for n in ANY_NUMBER.findall(output_text(notebook))] + results_numbers
    unsupported = [f"cell {i}: {number} in {sentence.strip()[:90]!r}"
                   for i, cell in enumerate(notebook["cells"]) if cell["cell_type"] == "markdown"
                   for sentence in prose_sentences("".join(cell["source"]))
                   for number in quoted_numbers(sentence) if not shown(number, evidence)]
    assert unsupported == []


@pytest.mark.parametrize("args, env, expected", [
    ([], {}, "demo"),
    ([], {"RPNET_PROFILE": "smoke"}, "smoke"),
    (["PROFILE=paper"], {"RPNET_PROFILE": "smoke"}, "paper"),
    ([], {"PROFILE": "", "RPNET_PROFILE": "smoke"}, "smoke"),
])
def test_make_lab_honours_the_profile_and_allows_root_only_as_root(args, env, expected):
    """README: ``make PROFILE=x`` wins over an exported RPNET_PROFILE, which wins over demo;
    ``--allow-root`` is passed only when running as root."""
    base = {k: v for k, v in os.environ.items() if k not in ("PROFILE", "RPNET_PROFILE")}
    out = subprocess.run(["make", "-n", "lab", *args], cwd=ROOT, env={**base, **env},
                         capture_output=True, text=True, check=True).stdout
    assert f"RPNET_PROFILE={expected} " in out
    assert ("--allow-root" in out) == (os.getuid() == 0)
