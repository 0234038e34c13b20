"""Stepping through 3-D volumes in a notebook: a slice browser with mask contours.

:func:`slice_browser` shows several volumes side by side (e.g. the pre- and post-treatment
exams) with their masks as contours and one slider over z. Volumes with different slice
counts move together by relative position. Without a live widget front end (no
``ipywidgets``, or ``RPNET_STATIC_FIGURES`` set, as ``make reproduce`` and ``make test`` do
so that stored outputs and nbval see a plain image) it returns a static montage instead:
one row per volume, a few slices through the masked region.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np

from utils.config import STATIC_ENV
from utils.figures import show_slice

CONTOUR_COLOURS = ("tab:red", "tab:cyan", "tab:orange", "tab:green")
# title -> (volume (z, y, x), {mask label: mask (z, y, x)})
Panels = Mapping[str, tuple[np.ndarray, Mapping[str, np.ndarray]]]


def widgets_available() -> bool:
    """True when an interactive slider can be shown (ipywidgets, and not forced static)."""
    if os.environ.get(STATIC_ENV):
        return False
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return False
    return True


def matching_slice(position: int, n_reference: int, n_slices: int) -> int:
    """The slice of a volume with ``n_slices`` at the relative ``position`` of another."""
    if n_reference <= 1:
        return n_slices // 2
    return int(np.rint(position * (n_slices - 1) / (n_reference - 1)))


def masked_slices(panels: Panels, count: int) -> list[int]:
    """``count`` slice positions (of the first volume) spread over the masked z range,
    or over the whole volume when nothing is masked."""
    volume, masks = next(iter(panels.values()))
    covered = np.zeros(volume.shape[0], dtype=bool)
    for mask in masks.values():
        if mask is not None and mask.shape[0] == volume.shape[0]:
            covered |= np.asarray(mask).reshape(mask.shape[0], -1).any(axis=1)
    lo, hi = (np.flatnonzero(covered)[[0, -1]] if covered.any() else (0, volume.shape[0] - 1))
    return sorted({int(z) for z in np.rint(np.linspace(lo, hi, count))})


def _draw(ax: plt.Axes, volume: np.ndarray, masks: Mapping[str, np.ndarray], z: int,
          title: str, window: tuple[float, float]) -> None:
    """Slice ``z`` of ``volume`` with its masks' contours (:func:`utils.figures.show_slice`)."""
    contours = [(None if mask is None else mask[z], colour)
                for colour, mask in zip(CONTOUR_COLOURS, masks.values(), strict=False)]
    show_slice(ax, volume[z], contours, title, window)


def _windows(panels: Panels) -> dict[str, tuple[float, float]]:
    """Display range per volume (1st-99.5th percentile), fixed while the slider moves."""
    return {title: tuple(float(v) for v in np.percentile(volume, [1.0, 99.5]))
            for title, (volume, _) in panels.items()}


def _legend(fig: plt.Figure, panels: Panels) -> None:
    labels = list(dict.fromkeys(k for _, masks in panels.values() for k in masks))
    handles = [plt.Line2D([], [], color=c, label=k) for c, k in zip(CONTOUR_COLOURS, labels,
                                                                   strict=False)]
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8,
                   frameon=False)


def slice_figure(panels: Panels, position: int) -> plt.Figure:
    """One row: every volume at the same relative slice position."""
    n_ref = next(iter(panels.values()))[0].shape[0]
    windows = _windows(panels)
    fig, axes = plt.subplots(1, len(panels), figsize=(3.0 * len(panels), 3.3), squeeze=False)
    for ax, (title, (volume, masks)) in zip(axes[0], panels.items(), strict=True):
        z = matching_slice(position, n_ref, volume.shape[0])
        _draw(ax, volume, masks, z, f"{title} (z={z})", windows[title])
    _legend(fig, panels)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return fig


MONTAGE_PANEL_IN = 1.7  # panel width in inches: stored montages stay small


def montage(panels: Panels, count: int = 4, positions: Sequence[int] | None = None
            ) -> plt.Figure:
    """Static montage: one row per volume, ``count`` slices through the masked region."""
    positions = list(positions) if positions is not None else masked_slices(panels, count)
    n_ref = next(iter(panels.values()))[0].shape[0]
    windows = _windows(panels)
    size = MONTAGE_PANEL_IN
    fig, axes = plt.subplots(len(panels), len(positions), squeeze=False,
                             figsize=(size * len(positions), (size + 0.1) * len(panels) + 0.4))
    for row, (title, (volume, masks)) in zip(axes, panels.items(), strict=True):
        for ax, position in zip(row, positions, strict=True):
            z = matching_slice(position, n_ref, volume.shape[0])
            _draw(ax, volume, masks, z, f"{title} z={z}", windows[title])
    _legend(fig, panels)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return fig


def slice_browser(panels: Panels, start: int | None = None, interactive: bool | None = None):
    """A z slider over ``panels`` (ipywidgets), or :func:`montage` without widgets.

    Returns the widget (display it as a cell's last expression) or the montage figure. With
    the widget, the static montage is displayed too, as a plain image output: a notebook saved
    from a live session keeps it (the widget's own output is not stored with its state).
    """
    interactive = widgets_available() if interactive is None else interactive
    if not interactive:
        fig = montage(panels)
        plt.close(fig)  # shown once, as the returned value (not again by the inline backend)
        return fig
    import ipywidgets as widgets
    from IPython.display import display

    n_ref = next(iter(panels.values()))[0].shape[0]
    first = masked_slices(panels, 3)[1 if len(masked_slices(panels, 3)) > 1 else 0]
    slider = widgets.IntSlider(value=first if start is None else start, min=0,
                               max=n_ref - 1, description="z", continuous_update=False)
    output = widgets.Output()

    def show(position: int) -> None:
        with output:
            output.clear_output(wait=True)
            fig = slice_figure(panels, position)
            display(fig)
            plt.close(fig)

    slider.observe(lambda change: show(change["new"]), names="value")
    show(slider.value)
    still = montage(panels)
    display(still)
    plt.close(still)
    return widgets.VBox([slider, output])
