"""Figures: the one saving helper (Agg, fixed dpi, PNG plus PDF, no timestamps) and the one
image-with-contour panel (:func:`show_slice`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np

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


def show_slice(ax: plt.Axes, image: np.ndarray, contours: Sequence[tuple[np.ndarray | None, str]]
               = (), title: str = "", window: tuple[float, float] | None = None,
               heat: np.ndarray | None = None) -> None:
    """The image-with-contour panel: a 2-D ``image`` in grey (``window`` = display range),
    an optional ``heat`` map (jet, 40%) and the 0.5 contour of each ``(mask, colour)`` whose
    mask has foreground; axes off, small title. Every figure with masks draws through this."""
    vmin, vmax = window if window is not None else (None, None)
    ax.imshow(image, cmap="gray", vmin=vmin, vmax=vmax, interpolation="nearest")
    if heat is not None:
        ax.imshow(heat, cmap="jet", alpha=0.4, vmin=0, vmax=1, interpolation="bilinear")
    for mask, colour in contours:
        if mask is not None and np.asarray(mask).any():
            ax.contour(np.asarray(mask) > 0, levels=[0.5], colors=colour, linewidths=0.9)
    ax.set_title(title, fontsize=8)
    ax.set_axis_off()
