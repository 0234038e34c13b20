# `make lab` starts JupyterLab with this config: a notebook saved from a live session is
# cleaned as `make reproduce` writes it (.jupyter/nbconvert_clean.py: no execution
# timestamps, no widget state or other volatile metadata; tags, kernelspec and language name
# kept), so opening, running and saving shows in git only the outputs that really changed.
from pathlib import Path

from nbconvert.preprocessors import ClearMetadataPreprocessor
from traitlets.config import Config

_rules = Config()
exec((Path(__file__).parent / "nbconvert_clean.py").read_text(), {"c": _rules})
_clear = ClearMetadataPreprocessor(config=_rules)


def clean_notebook(model, **kwargs):
    """Jupyter's pre-save hook: drop volatile metadata from a notebook about to be saved."""
    if model.get("type") == "notebook":
        _clear.preprocess(model["content"], {})


c.FileContentsManager.pre_save_hook = clean_notebook  # noqa: F821
