"""RP-Net's variants: what each one takes, returns and shares, and the names of its parts.

Plain Python (no Keras): :mod:`utils.training.dataset` and the figures read the table
without building a network; :func:`utils.model.rpnet.build_rpnet` builds a variant from it.
"""

from __future__ import annotations

from dataclasses import dataclass

BRANCHES: tuple[str, ...] = ("pre", "post")
MASKS: dict[str, str] = {"pre": "mask_pre", "post": "mask_post"}
JOINS: tuple[str, ...] = ("encoder", "bottleneck", "deep_supervision")
HEADS: tuple[str, ...] = ("tumour", "paper")
COMPARISONS: tuple[str, ...] = ("subtract", "concat", "abs_diff")


@dataclass(frozen=True)
class VariantSpec:
    """What one model variant takes, returns and shares."""

    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    tied: bool
    joins: tuple[str, ...]
    segmentation: bool
    description: str
    head: str = "tumour"
    seeded: bool = False  # trained with Profile.seeds replicas (the paper's claims)


def _spec(name: str, description: str, inputs: tuple[str, ...] = BRANCHES, tied: bool = True,
          joins: tuple[str, ...] = JOINS, segmentation: bool = True,
          head: str = "tumour", seeded: bool = False) -> VariantSpec:
    masks = tuple(MASKS[b] for b in inputs) if segmentation else ()
    return VariantSpec(name, inputs, (*masks, "pcr"), tied, joins, segmentation, description,
                       head, seeded)


VARIANTS: dict[str, VariantSpec] = {v.name: v for v in (
    _spec("full", "Siamese RP-Net: shared backbone, pre/post masks, tumour-guided pCR readout",
          seeded=True),
    _spec("paper_head", "the release's pCR head: conv + instance norm + global average pool "
          "over the whole ROI", head="paper", seeded=True),
    _spec("single_task", "pCR only: same network, no segmentation losses (its tumour maps "
          "are attention learned from pCR alone)", segmentation=False, seeded=True),
    _spec("pre_only", "pre-treatment exam only: joins use pre features alone", inputs=("pre",),
          seeded=True),
    _spec("post_only", "post-treatment exam only: joins use post features alone",
          inputs=("post",), seeded=True),
    _spec("untied", "two backbones with separate weights (as in the authors' release)",
          tied=False),
    _spec("bottleneck_join", "pCR from the bottleneck join only", joins=("bottleneck",)),
)}
ALL_VARIANTS: tuple[str, ...] = tuple(VARIANTS)
# The main model and the ablations that test the paper's claims (two time points, multi-task,
# the tumour-guided head) are trained with Profile.seeds replicas; the others once.
SEEDED_VARIANTS: tuple[str, ...] = tuple(name for name, v in VARIANTS.items() if v.seeded)
