"""RP-Net's U-Net grid: strides, level shapes, pooling factors, join levels and the
receptive field, computed from the input size (plain Python, no Keras)."""

from __future__ import annotations

import math
from collections.abc import Sequence

Strides = tuple[tuple[int, int, int], ...]


def level_strides(shape_zyx: Sequence[int], depth: int) -> Strides:
    """Stride of each of the ``depth - 1`` downsampling steps, from the input size.

    y and x are halved while even and at least 4. z is halved only while it is even, at
    least 4, and not under half the in-plane size, so thick-slice volumes (few slices, many
    in-plane voxels) first get ``(1, 2, 2)`` steps until the grid is about isotropic in
    voxels. Example: (16, 40, 40), depth 4 -> (1,2,2), (2,2,2), (2,2,2).
    """
    z, y, x = (int(s) for s in shape_zyx)
    strides = []
    for _ in range(depth - 1):
        sy, sx = (2 if s % 2 == 0 and s >= 4 else 1 for s in (y, x))
        sz = 2 if z % 2 == 0 and z >= 4 and 2 * z >= max(y, x) else 1
        strides.append((sz, sy, sx))
        z, y, x = z // sz, y // sy, x // sx
    return tuple(strides)


def level_shapes(shape_zyx: Sequence[int], depth: int) -> list[tuple[int, int, int]]:
    """Spatial size of every U-Net level (level 0 = input resolution)."""
    shapes = [tuple(int(s) for s in shape_zyx)]
    for stride in level_strides(shape_zyx, depth):
        shapes.append(tuple(s // k for s, k in zip(shapes[-1], stride, strict=True)))
    return shapes


def encoder_join_level(depth: int) -> int:
    """The encoder level joined: 2 (1/4 resolution), or depth - 2 for a depth-3 network."""
    return min(2, depth - 2)


def receptive_field(depth: int, strides: Sequence[Sequence[int]] | None = None,
                    where: str = "bottleneck") -> tuple[int, int, int]:
    """Theoretical receptive field (voxels per z, y, x axis) of one output voxel.

    ``where="bottleneck"``: the deepest encoder features (the bottleneck join);
    ``where="mask"``: the full-resolution segmentation output. Standard recursion
    ``rf += (k - 1) * jump``; nearest-neighbour upsampling by ``s`` divides the jump by ``s``.
    ``strides`` defaults to isotropic 2s; pass :func:`level_strides` for a given input.
    """
    if where not in ("bottleneck", "mask"):
        raise ValueError(f"where must be 'bottleneck' or 'mask', not {where!r}")
    strides = [(2, 2, 2)] * (depth - 1) if strides is None else [tuple(s) for s in strides]
    return tuple(_rf_axis([s[axis] for s in strides], where) for axis in range(3))


def _rf_axis(steps: Sequence[int], where: str) -> int:
    rf, jump = 1.0, 1.0
    kernels = [(3, 1), (3, 1), (3, 1)]  # level-0 input conv and context module
    for s in steps:
        kernels += [(3, s), (3, 1), (3, 1)]  # strided conv and context module
    for k, s in kernels:
        rf, jump = rf + (k - 1) * jump, jump * s
    if where == "mask":
        for s in reversed(steps):
            jump /= s
            rf += (3 - 1) * jump * 2  # up-conv and localisation 3x3x3 (its 1x1x1 adds 0)
    return math.ceil(rf)


def join_levels(depth: int) -> dict[str, int]:
    return {"encoder": encoder_join_level(depth), "bottleneck": depth - 1,
            "deep_supervision": 1}


def level_pool_sizes(shape_zyx: Sequence[int], depth: int) -> list[tuple[int, int, int]]:
    """Cumulative downsampling factor of every U-Net level (level 0: (1, 1, 1))."""
    sizes = [(1, 1, 1)]
    for stride in level_strides(shape_zyx, depth):
        sizes.append(tuple(a * b for a, b in zip(sizes[-1], stride, strict=True)))
    return sizes
