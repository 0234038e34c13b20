"""QC figures' helpers."""

from __future__ import annotations

import numpy as np
import pytest

from utils.preprocessing import qc


def test_checkerboard_alternates_tiles_of_the_two_images():
    a, b = np.zeros((16, 16)), np.ones((16, 16))
    board = qc.checkerboard(a, b, tiles=4)
    assert board.shape == (16, 16)
    np.testing.assert_array_equal(board[::4, ::4], np.indices((4, 4)).sum(axis=0) % 2)
    assert set(np.unique(board[:4, :4])) == {0.0}  # whole tiles from one image


def test_forward_pass_figure_shows_inputs_and_both_masks():
    import matplotlib.pyplot as plt

    from utils.model.architecture import plot_forward_pass

    mask = np.zeros((6, 8, 8), np.uint8)
    mask[3, 2:5, 2:5] = 1
    sample = {"image_pre": np.ones((6, 8, 8, 2)), "image_post": np.zeros((6, 8, 8, 2)),
              "mask_pre": mask, "mask_post": mask}
    outputs = {"mask_pre": np.full((1, 6, 8, 8, 1), 0.2),
               "mask_post": np.full((1, 6, 8, 8, 1), 0.7)}
    fig = plot_forward_pass(sample, outputs)
    assert [ax.get_title() for ax in fig.axes] == ["pre T2W", "post T2W", "mask_pre output",
                                                   "mask_post output"]
    assert float(fig.axes[3].images[0].get_array().mean()) == pytest.approx(0.7)
    plt.close(fig)
