# `make lab` starts JupyterLab with this config: a notebook saved from a live session is
# cleaned as `make reproduce` writes it (.jupyter/nbconvert_clean.py: no execution
# timestamps, no widget state or other volatile metadata; tags, kernelspec and language name
# kept), and live widget views (a progress bar, the slice browser's slider) are dropped:
# their state is not saved, so they would show nothing when reopened, and each run gives
# them new ids. The slice browser's static montage beside the slider is kept. Opening,
# running and saving thus shows in git only the outputs that really changed.
from pathlib import Path

import nbformat
from nbconvert.preprocessors import ClearMetadataPreprocessor
from traitlets.config import Config

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
_rules = Config()
exec((Path(__file__).parent / "nbconvert_clean.py").read_text(), {"c": _rules})
_clear = ClearMetadataPreprocessor(config=_rules)


def clean_notebook(model, **kwargs):
    """Jupyter's pre-save hook: clean a notebook about to be saved (``model["content"]`` is
    the plain JSON dict the browser sent)."""
    if model.get("type") != "notebook":
        return
    notebook, _ = _clear.preprocess(nbformat.from_dict(model["content"]), {})
    for cell in notebook.cells:
        if "outputs" in cell:
            cell.outputs = [o for o in cell.outputs if WIDGET_VIEW not in o.get("data", {})]
    model["content"] = notebook


c.FileContentsManager.pre_save_hook = clean_notebook  # noqa: F821
