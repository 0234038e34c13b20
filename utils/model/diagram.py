"""Figures of RP-Net (notebook 02): the schematic, one forward pass and how the
tumour-guided head pools. Image panels with masks draw through :func:`utils.figures.show_slice`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np

from utils.figures import show_slice
from utils.measures import largest_slice
from utils.model.levels import encoder_join_level, join_levels, level_pool_sizes
from utils.model.variants import JOINS, MASKS, VARIANTS, VariantSpec


# --------------------------------------------------------------------------- schematic
def draw_architecture(ax=None, depth: int = 4, base_filters: int = 8,
                      comparison: str = "subtract", variant: str = "full"):
    """A schematic of the Siamese RP-Net (matplotlib patches only); returns the Figure."""
    import matplotlib

    if ax is None and matplotlib.get_backend().lower() not in (
            "agg", "module://matplotlib_inline.backend_inline"):
        matplotlib.use("Agg")

    spec = VARIANTS[variant]
    if ax is None:
        _, ax = plt.subplots(figsize=(11, 5.5))
    ax.set_axis_off()
    ax.set_xlim(-2.2, 2 * depth + 3.2)
    ax.set_ylim(-5.4, 5.4)
    ends = {b: _draw_branch(ax, b, depth, base_filters, spec) for b in spec.inputs}
    _draw_joins(ax, depth, spec, comparison, ends)
    shared = ("one branch" if len(spec.inputs) == 1 else "one shared backbone (tied weights)"
              if spec.tied else "two backbones (untied)")
    ax.text(depth - 1, -5.2, "blue: encoder level (filters); orange: decoder level; grey: skip "
            "connections; purple: joins; green: segmentation outputs", ha="center", fontsize=7)
    ax.set_title(f"3D RP-Net, variant '{variant}': {shared}, depth {depth}, "
                 f"{base_filters} base filters")
    return ax.figure


def _box(ax, x: float, y: float, w: float, h: float, color: str, text: str = "",
         size: int = 7) -> None:
    from matplotlib.patches import FancyBboxPatch

    ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.02",
                                facecolor=color, edgecolor="0.2", linewidth=0.8))
    if text:
        ax.text(x, y, text, ha="center", va="center", fontsize=size)


def _arrow(ax, start: tuple[float, float], end: tuple[float, float], color: str = "0.3",
           style: str = "-|>") -> None:
    from matplotlib.patches import FancyArrowPatch

    ax.add_patch(FancyArrowPatch(start, end, arrowstyle=style, mutation_scale=8, color=color,
                                 linewidth=0.8, shrinkA=2, shrinkB=2))


def _level_x(depth: int, level: int, decoder: bool) -> float:
    return 2 * depth - 2 - level if decoder else level


def _draw_branch(ax, branch: str, depth: int, base_filters: int, spec: VariantSpec) -> dict:
    """One U-Net branch, mirrored: pre on top, post below; returns join anchor points."""
    sign = 1 if branch == "pre" else -1
    level_y = {level: sign * (4.2 - 0.8 * level) for level in range(depth)}
    _box(ax, -1.4, level_y[0], 1.1, 0.8, "#d9e6f2", f"{branch}\nT2W + DWI")
    _arrow(ax, (-0.85, level_y[0]), (-0.3, level_y[0]))
    for level in range(depth):
        h = 1.0 - 0.15 * level
        _box(ax, level, level_y[level], 0.55, h, "#9ecae1",
             f"{base_filters * 2 ** level}", 6)
        if level:
            _arrow(ax, (level - 0.72, level_y[level - 1]), (level - 0.28, level_y[level]))
    last = 0 if spec.segmentation else 1
    for level in range(depth - 2, last - 1, -1):
        x = _level_x(depth, level, True)
        _box(ax, x, level_y[level], 0.55, 1.0 - 0.15 * level, "#fdd0a2",
             f"{base_filters * 2 ** level}", 6)
        _arrow(ax, (x - 0.72, level_y[level + 1]), (x - 0.28, level_y[level]))
        _arrow(ax, (level + 0.3, level_y[level]), (x - 0.3, level_y[level]), "0.6", "-")
    if spec.segmentation:
        x = 2 * depth - 1
        _box(ax, x, level_y[0], 0.9, 0.6, "#c7e9c0", MASKS[branch], 7)
        _arrow(ax, (x - 1, level_y[0]), (x - 0.45, level_y[0]))
    return {"encoder": (encoder_join_level(depth), level_y[encoder_join_level(depth)]),
            "bottleneck": (depth - 1, level_y[depth - 1]),
            "deep_supervision": (_level_x(depth, 1, True), level_y[1])}


def _draw_joins(ax, depth: int, spec: VariantSpec, comparison: str, ends: dict) -> None:
    symbol = {"subtract": "post−pre", "concat": "concat", "abs_diff": "|post−pre|"}[comparison]
    head_x = 2 * depth + 1.6
    head = ("+ tumour\nvolumes,\nmasked\nmeans/SDs\nBN, Dense σ\n→ pCR" if spec.head == "tumour"
            else "concat\ndropout\nDense σ\n→ pCR")
    _box(ax, head_x, 0, 1.1, 1.9 if spec.head == "tumour" else 1.2, "#fcbba1", head, 7)
    pooling = "mean in\ntumour" if spec.head == "tumour" else "conv+GAP"
    for i, key in enumerate(spec.joins):
        x = next(iter(ends.values()))[key][0]
        y = 0.9 * (1 - i) if len(spec.joins) > 1 else 0
        text = symbol if len(ends) > 1 else "features"
        _box(ax, x, y, 1.0, 0.5, "#e5d8f0", f"{text}\n{pooling}", 6)
        for anchor in ends.values():
            side = 1 if anchor[key][1] > 0 else -1
            _arrow(ax, (x, anchor[key][1] - side * 0.4), (x, y + side * 0.25), "#756bb1")
        _arrow(ax, (x + 0.5, y), (head_x - 0.55, 0), "#756bb1")
    if spec.tied and len(ends) > 1:
        ax.text(-1.4, 0, "shared\nweights", ha="center", va="center", fontsize=7,
                style="italic")
        _arrow(ax, (-1.4, 0.4), (-1.4, 3.7), "0.4", "<|-|>")
        _arrow(ax, (-1.4, -0.4), (-1.4, -3.7), "0.4", "<|-|>")


# --------------------------------------------------------------------------- forward pass
def plot_forward_pass(sample: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]
                      ) -> plt.Figure:
    """Pre and post T2W (channel 0) through the largest tumour slice with the mask contours,
    beside the network's two predicted masks for that sample (``outputs``: batch of one)."""
    z = largest_slice(sample["mask_pre"])
    panels = [("pre T2W", sample["image_pre"][z, ..., 0], sample["mask_pre"][z]),
              ("post T2W", sample["image_post"][z, ..., 0], sample["mask_post"][z]),
              ("mask_pre output", outputs["mask_pre"][0, z, ..., 0], None),
              ("mask_post output", outputs["mask_post"][0, z, ..., 0], None)]
    fig, axes = plt.subplots(1, 4, figsize=(9, 2.6))
    for ax, (title, image, contour) in zip(axes, panels, strict=True):
        show_slice(ax, image, [(contour, "tab:red")], title)
    return fig


# --------------------------------------------------------------------------- head figure
def pooled_region(mask_zyx: np.ndarray, pool_size: Sequence[int]) -> np.ndarray:
    """Block means of a (z, y, x) mask over ``pool_size`` blocks (as AveragePooling3D)."""
    shape = [n // k for n, k in zip(mask_zyx.shape, pool_size, strict=True)]
    blocks = np.asarray(mask_zyx, float)[:shape[0] * pool_size[0], :shape[1] * pool_size[1],
                                          :shape[2] * pool_size[2]]
    return blocks.reshape(shape[0], pool_size[0], shape[1], pool_size[1], shape[2],
                          pool_size[2]).mean(axis=(1, 3, 5))


def plot_tumour_head(image_pre: np.ndarray, image_post: np.ndarray, mask_pre: np.ndarray,
                     mask_post: np.ndarray, depth: int, dwi_channel: int = 1):
    """How the tumour-guided head pools: on the slice with the largest tumour, the pre and
    post DWI with both masks, the tumour region (union of the masks) and that region pooled
    to each join's grid (the weights of the masked means); returns the Figure."""
    region = np.maximum(mask_pre > 0, mask_post > 0).astype(float)
    z = largest_slice(region)
    pools = level_pool_sizes(region.shape, depth)
    levels = join_levels(depth)
    fig, axes = plt.subplots(1, 3 + len(JOINS), figsize=(2.6 * (3 + len(JOINS)), 3.3))
    for ax, (title, image) in zip(axes[:2], (("pre DWI", image_pre), ("post DWI", image_post)),
                                  strict=True):
        show_slice(ax, image[z, ..., dwi_channel],
                   [(mask_pre[z], "#1f77b4"), (mask_post[z], "#d62728")],
                   f"{title}\n(blue: pre mask, red: post)")
    axes[2].imshow(region[z], cmap="magma", vmin=0, vmax=1)
    axes[2].set_title("tumour region\n(pre ∪ post), full grid", fontsize=8)
    for ax, key in zip(axes[3:], JOINS, strict=True):
        size = pools[levels[key]]
        pooled = pooled_region(region, size)
        ax.imshow(pooled[min(z // size[0], len(pooled) - 1)], cmap="magma", vmin=0, vmax=1)
        ax.set_title(f"weights at the {key.replace('_', ' ')}\njoin "
                     f"({'x'.join(map(str, pooled.shape))} grid)", fontsize=8)
    for ax in axes:
        ax.set_axis_off()
    fig.tight_layout()
    return fig
