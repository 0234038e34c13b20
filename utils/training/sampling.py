"""Balanced sampling of the fit patients (the authors oversampled pCR patients 5x).

Every epoch holds every fit patient once plus repeated pCR patients, so that pCR patients make
up ``pcr_fraction`` (default 0.5) of the epoch. Plain NumPy: the model card
(:mod:`utils.training.modelcard`) records the resulting training fraction.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def balanced_epoch(ids: Sequence[str], labels: Mapping[str, int], pcr_fraction: float | None,
                   rng: np.random.Generator) -> list[str]:
    """One shuffled epoch: every patient once, pCR patients repeated to ``pcr_fraction``.

    With ``n_neg`` non-responders the epoch holds ``round(f * n_neg / (1 - f))`` pCR samples
    (each pCR patient ``k`` or ``k + 1`` times). ``None`` (or a single class): no resampling.
    """
    pos = [p for p in ids if labels[p] == 1]
    neg = [p for p in ids if labels[p] != 1]
    items = list(ids)
    if pcr_fraction is not None and pos and neg:
        n_pos = max(1, round(pcr_fraction * len(neg) / (1 - pcr_fraction)))
        reps, extra = divmod(n_pos, len(pos))
        items = neg + pos * reps + list(rng.choice(pos, extra, replace=False))
    return [items[i] for i in rng.permutation(len(items))]


def epoch_fraction(ids: Sequence[str], labels: Mapping[str, int], pcr_fraction: float | None
                   ) -> float:
    """Expected fraction of pCR samples in a training epoch."""
    pos = sum(labels[p] == 1 for p in ids)
    if pcr_fraction is None or pos == 0 or pos == len(ids):
        return pos / max(len(ids), 1)
    n_pos = max(1, round(pcr_fraction * (len(ids) - pos) / (1 - pcr_fraction)))
    return n_pos / (n_pos + len(ids) - pos)
