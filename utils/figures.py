"""The one figure-saving helper (Agg, fixed dpi, PNG plus PDF, no timestamps)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

if matplotlib.get_backend().lower() not in ("agg", "module://matplotlib_inline.backend_inline"):
    matplotlib.use("Agg")
import matplotlib.pyplot as plt

from utils.io import atomic_path

DPI = 150
STYLE = {"figure.dpi": 100, "savefig.dpi": DPI, "font.size": 9, "axes.titlesize": 10,
         "axes.spines.top": False, "axes.spines.right": False}
plt.rcParams.update(STYLE)


def save_figure(fig: plt.Figure, name: str, out_dir: str | Path, pdf: bool = True) -> list[Path]:
    """Save ``fig`` as ``out_dir/name.png`` (and ``.pdf``) atomically, without timestamps."""
    out_dir = Path(out_dir)
    written = []
    formats = [("png", {"Software": None}), ("pdf", {"CreationDate": None, "ModDate": None,
                                                     "Producer": None, "Creator": None})]
    for ext, metadata in formats if pdf else formats[:1]:
        target = out_dir / f"{name}.{ext}"
        with atomic_path(target) as tmp:
            fig.savefig(tmp, format=ext, dpi=DPI, metadata=metadata, bbox_inches="tight")
        written.append(target)
    return written
