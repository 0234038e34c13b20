"""A fair trial for the release's pCR head: the authors' optimiser for as many epochs as a
benchmark run allows, against Adam, and the same for the tumour-guided head trained end to end.

Usage: ``.venv/bin/python benchmarks/exp_authors_optimizer.py --profile demo [--epochs 24]``

Each run trains one model (seed 0, the cache of notebook 01, balanced epochs, the best epoch
by the tune subset's loss) with the pCR loss reaching the backbone and no readout refit: the
network's own pCR unit (prior-corrected) is scored on both validation cohorts.

1. ``paper_head_sgd``: the release's head (conv + instance norm + global average pooling of
   the three joins) with the authors' optimiser, SGD lr 1e-2, momentum 0.9, halved on
   plateau (:meth:`utils.training.config.TrainConfig.authors`);
2. ``paper_head_adam``: the same head with this package's Adam (lr 1e-3, halved on plateau);
3. ``full_end_to_end_adam`` and 4. ``full_end_to_end_sgd``: the tumour-guided head with the
   pCR gradient reaching the shared backbone (``pcr_gradient=True``), no readout.

Writes ``benchmarks/results/exp_authors_optimizer_<profile>.json``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from benchmarks.common import write_result
from benchmarks.exp_training_schedule import run
from utils import config
from utils.training.config import TrainConfig


def settings(epochs: int) -> dict[str, tuple[str, TrainConfig]]:
    """Name -> (variant, training configuration) of each run."""
    common = {"epochs": epochs, "readout": False}
    return {
        "paper_head_sgd": ("paper_head", TrainConfig.authors(**common)),
        "paper_head_adam": ("paper_head", TrainConfig(**common)),
        "full_end_to_end_adam": ("full", TrainConfig(pcr_gradient=True, **common)),
        "full_end_to_end_sgd": ("full", TrainConfig.authors(pcr_gradient=True, **common)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="demo", choices=sorted(config.PROFILES))
    parser.add_argument("--epochs", type=int, default=24)
    args = parser.parse_args()
    profile = config.get_profile(args.profile)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, (variant, cfg) in settings(args.epochs).items():
            changes = {"optimizer": cfg.optimizer, "learning_rate": cfg.learning_rate,
                       "pcr_gradient": cfg.pcr_gradient, "readout": cfg.readout,
                       "epochs": cfg.epochs}
            rows.append(run(profile, name, changes, Path(tmp), variant, cfg))
            print(json.dumps(rows[-1]), flush=True)
    path = write_result(f"exp_authors_optimizer_{profile.name}",
                        {"profile": profile.name, "seed": 0, "epochs": args.epochs,
                         "runs": rows})
    print(f"wrote {path.name}")


if __name__ == "__main__":
    main()
