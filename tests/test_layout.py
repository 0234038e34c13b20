"""The package's layout: stage subpackages, imports that follow the stage order, small modules.

``utils/`` has one subpackage per pipeline stage and a few shared modules at the top. A
module may import the shared modules, its own stage and earlier stages, never a later one,
type-only and function-level imports included, and the imports between modules form no cycle.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from utils.config import ROOT

UTILS = ROOT / "utils"
SHARED = {"config", "io", "repro", "figures", "progress", "viewer", "errors", "geometry",
          "measures", "parallel"}
STAGES = ("cohort", "preprocessing", "model", "localisation", "training", "inference",
          "evaluation")
ALIASES = {"manifest", "preprocess", "predict", "train", "evaluate"}  # ``python -m utils.X``
MODULE_LINE_LIMIT = 420  # "about 400 lines"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def rank(module: str) -> int:
    """0 shared, 1..7 the stages in pipeline order, 8 the old entry-point aliases."""
    parts = module.split(".")
    if len(parts) == 1:
        return 0
    if parts[1] in STAGES:
        return 1 + STAGES.index(parts[1])
    if parts[1] in ALIASES:
        return len(STAGES) + 1
    assert parts[1] in SHARED, f"{module}: not a stage subpackage nor a shared module"
    return 0


def imports_of(path: Path) -> set[str]:
    """Every ``utils`` module that ``path`` imports, anywhere in the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("utils")}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and \
                node.module.startswith("utils"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                is_module = (UTILS.parent / (sub.replace(".", "/") + ".py")).exists() or \
                    (UTILS.parent / sub.replace(".", "/")).is_dir()
                found.add(sub if is_module else node.module)
        elif isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"{path}: relative import (use absolute utils.* imports)")
    return found


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports_of(p) for p in sorted(UTILS.rglob("*.py"))}


def test_utils_holds_the_stage_subpackages_and_the_shared_modules():
    packages = {p.name for p in UTILS.iterdir() if (p / "__init__.py").exists()}
    modules = {p.stem for p in UTILS.glob("*.py")} - {"__init__"}
    assert packages == set(STAGES)
    assert modules == SHARED | ALIASES


def test_every_subpackage_says_what_its_stage_reads_and_writes():
    for stage in STAGES:
        doc = ast.get_docstring(ast.parse((UTILS / stage / "__init__.py").read_text()))
        assert doc and "Reads" in doc and "write" in doc, f"utils/{stage}/__init__.py"


def test_no_import_runs_against_the_stage_order():
    against = [f"{source} imports {target}" for source, targets in graph().items()
               for target in targets if rank(target) > rank(source)]
    assert against == []


def test_the_imports_between_modules_form_no_cycle():
    edges = graph()
    state: dict[str, int] = {}  # 1 on the stack, 2 done

    def visit(node: str, stack: list[str]) -> list[str]:
        state[node] = 1
        for target in sorted(edges.get(node, ())):
            if target not in edges:
                continue
            if state.get(target) == 1:
                return [*stack, node, target]
            if state.get(target) is None and (cycle := visit(target, [*stack, node])):
                return cycle
        state[node] = 2
        return []

    cycles = [c for n in sorted(edges) if state.get(n) is None and (c := visit(n, []))]
    assert cycles == []


def test_no_utils_module_is_over_about_400_lines():
    sizes = {str(p.relative_to(ROOT)): len(p.read_text(encoding="utf-8").splitlines())
             for p in UTILS.rglob("*.py")}
    assert {name: n for name, n in sizes.items() if n > MODULE_LINE_LIMIT} == {}


def loaded_after(*modules: str) -> set[str]:
    code = ("import importlib, sys\n"
            f"for m in {list(modules)!r}: importlib.import_module(m)\n"
            "print('\\n'.join(sorted(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, check=True)
    return set(result.stdout.split())


def test_the_evaluation_stage_and_its_report_load_no_preprocessing():
    loaded = loaded_after("utils.evaluation", "utils.evaluation.report")
    assert sorted(m for m in loaded if m.startswith("utils.preprocessing")) == []


def test_evaluation_reads_the_cache_without_the_preprocessing_pipeline():
    evaluation = [module_name(p) for p in sorted((UTILS / "evaluation").glob("*.py"))
                  if p.stem != "__main__"]  # the entry point runs the command
    loaded = loaded_after(*evaluation)
    heavy = {"pipeline", "registration", "intensity", "roi", "qc", "__main__"}
    assert sorted(m for m in loaded if m.startswith("utils.preprocessing.")
                  and m.rsplit(".", 1)[1] in heavy) == []
