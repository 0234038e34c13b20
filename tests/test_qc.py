"""QC figures' helpers."""

from __future__ import annotations

import numpy as np

from utils.preprocessing import qc


def test_checkerboard_alternates_tiles_of_the_two_images():
    a, b = np.zeros((16, 16)), np.ones((16, 16))
    board = qc.checkerboard(a, b, tiles=4)
    assert board.shape == (16, 16)
    np.testing.assert_array_equal(board[::4, ::4], np.indices((4, 4)).sum(axis=0) % 2)
    assert set(np.unique(board[:4, :4])) == {0.0}  # whole tiles from one image

