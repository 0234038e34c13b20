"""The notebooks' slice browser: slider with widgets, static montage without."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest

from utils import viewer


def panels() -> dict:
    rng = np.random.default_rng(0)
    pre, post = rng.normal(size=(20, 16, 16)), rng.normal(size=(10, 16, 16))
    mask_pre = np.zeros_like(pre, dtype=np.uint8)
    mask_pre[6:12, 4:9, 4:9] = 1
    mask_post = np.zeros_like(post, dtype=np.uint8)
    mask_post[3:6, 5:8, 5:8] = 1
    return {"pre": (pre, {"truth": mask_pre}), "post": (post, {"truth": mask_post})}


def test_volumes_with_other_slice_counts_move_together():
    assert viewer.matching_slice(0, 20, 10) == 0
    assert viewer.matching_slice(19, 20, 10) == 9
    assert viewer.matching_slice(10, 20, 20) == 10
    assert viewer.matching_slice(3, 1, 7) == 3  # a single-slice reference: the middle


def test_montage_slices_span_the_masked_range():
    assert viewer.masked_slices(panels(), 4) == [6, 8, 9, 11]
    fig = viewer.montage(panels(), count=4)
    axes = [ax for ax in fig.axes if ax.images]
    assert len(axes) == 8  # two volumes x four slices
    assert [ax.get_title() for ax in axes[:4]] == [f"pre z={z}" for z in (6, 8, 9, 11)]
    assert axes[4].get_title() == "post z=3"  # pre slice 6 of 20 -> post slice 3 of 10
    assert any(ax.collections for ax in axes)  # mask contours drawn
    plt.close(fig)


def test_static_without_widgets(monkeypatch):
    monkeypatch.setenv(viewer.STATIC_ENV, "1")
    assert not viewer.widgets_available()
    shown = viewer.slice_browser(panels())
    assert isinstance(shown, plt.Figure)
    plt.close(shown)


def test_slider_with_widgets_redraws_on_change(monkeypatch):
    pytest.importorskip("ipywidgets")
    monkeypatch.delenv(viewer.STATIC_ENV, raising=False)
    drawn = []
    real = viewer.slice_figure
    monkeypatch.setattr(viewer, "slice_figure", lambda p, z: drawn.append(z) or real(p, z))
    box = viewer.slice_browser(panels())
    slider = box.children[0]
    assert (slider.min, slider.max) == (0, 19) and drawn == [slider.value]
    slider.value = 15
    assert drawn[-1] == 15
    plt.close("all")


def test_a_live_browser_also_shows_the_static_montage(monkeypatch):
    pytest.importorskip("ipywidgets")
    monkeypatch.delenv(viewer.STATIC_ENV, raising=False)
    displayed = []
    monkeypatch.setattr("IPython.display.display", displayed.append)
    viewer.slice_browser(panels())
    assert [type(d) for d in displayed].count(plt.Figure) == 2  # the slice and the montage
    montage = displayed[-1]
    assert len(montage.axes) == len(viewer.montage(panels()).axes)
    plt.close("all")


def test_panels_draw_through_the_one_overlay_helper(monkeypatch):
    calls = []
    real = viewer.show_slice
    monkeypatch.setattr(viewer, "show_slice",
                        lambda ax, image, contours, *a: calls.append(contours) or real(
                            ax, image, contours, *a))
    fig = viewer.montage(panels(), count=4)
    assert len(calls) == 8
    (mask, colour), = calls[0]  # pre, z=6: the truth mask's slice, first contour colour
    assert colour == viewer.CONTOUR_COLOURS[0]
    np.testing.assert_array_equal(mask, panels()["pre"][1]["truth"][6])
    plt.close(fig)
