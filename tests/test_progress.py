"""Progress bars: a notebook widget in a live kernel; in stored notebooks one timing-free line on
stdout (utils/progress.py)."""

from __future__ import annotations

import re

import pytest

from utils import progress

# What a time, rate, ETA or postfix looks like in a tqdm line: 00:02, <00:00, 1.72it/s, [..]
TIMING = re.compile(r"\d+:\d\d|\d\s*(it|s)/|/s\b|[\[\]<]|=")


def run_bar(monkeypatch: pytest.MonkeyPatch, static: bool, **kwargs) -> None:
    if static:
        monkeypatch.setenv(progress.STATIC_ENV, "1")
    else:
        monkeypatch.delenv(progress.STATIC_ENV, raising=False)
    bar = progress.progress_bar(12, "preprocess", unit="patient", mininterval=0, **kwargs)
    for _ in range(12):
        bar.update()
        bar.set_postfix_str("loss=0.123 auc=0.917")  # refreshes: would draw a live line
    bar.close()


def test_static_bar_writes_one_clean_line_to_stdout(monkeypatch, capsys):
    run_bar(monkeypatch, static=True)
    out, err = capsys.readouterr()
    assert err == ""
    assert out.count("\n") == 1 and "\r" not in out
    assert out.startswith("preprocess: 100%|") and out.rstrip().endswith("12/12 patient")
    assert not TIMING.search(out), out


def test_static_bar_ignores_a_file_argument(monkeypatch, capsys):
    import sys

    run_bar(monkeypatch, static=True, file=sys.stderr, ascii=True, ncols=100)
    out, err = capsys.readouterr()
    assert err == "" and out == "preprocess: 100%|##########| 12/12 patient\n"


def test_live_bar_shows_timings(monkeypatch, capsys):
    """The pattern above does catch what a live tqdm line holds (the test above can fail)."""
    run_bar(monkeypatch, static=False)
    _, err = capsys.readouterr()
    assert TIMING.search(err) and "loss=0.123" in err


def test_disabled_bar_writes_nothing(monkeypatch, capsys):
    run_bar(monkeypatch, static=True, enabled=False)
    assert capsys.readouterr() == ("", "")


def test_live_bar_in_a_notebook_is_a_widget_and_leaves_no_stderr(monkeypatch):
    """In a live kernel (JupyterLab) the bar is tqdm's notebook widget, not stderr text."""
    import nbformat
    from nbclient import NotebookClient

    from utils.config import ROOT

    code = ("from utils.progress import progress_bar\n"
            "bar = progress_bar(5, 'preprocess', unit='patient')\n"
            "for _ in range(5):\n    bar.update()\nbar.close()")
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code)])
    monkeypatch.delenv(progress.STATIC_ENV, raising=False)  # the kernel inherits this
    NotebookClient(notebook, timeout=120, kernel_name="python3",
                   resources={"metadata": {"path": str(ROOT)}}).execute()
    outputs = notebook.cells[0].outputs
    assert [o for o in outputs if o.output_type == "stream"] == []
    assert [list(o.get("data", {})) for o in outputs] == [
        ["text/plain", "application/vnd.jupyter.widget-view+json"]], outputs
