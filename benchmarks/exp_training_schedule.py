"""The experiment behind the training schedule: where the pCR gradient goes, and the readout.

Usage: ``.venv/bin/python benchmarks/exp_training_schedule.py --profile demo``

Trains the ``full`` model (seed 0, the profile's budget, the cache of notebook 01) three ways
and reports the validation AUCs of each:

1. ``default``: the pCR loss stops at the head (``pcr_gradient=False``), then the
   cross-validated logistic readout (stage 2) — what ``train_all`` does;
2. ``pcr_gradient``: the pCR loss also trains the backbone, then the same readout;
3. ``no_readout``: as 1 but keeping the gradient-trained pCR unit (prior-corrected), no stage 2.

For the two runs with a readout it also records the readout's out-of-fold AUC over the
training cohort: when the backbone has fitted the training labels (2), that estimate is
optimistic. Writes ``benchmarks/results/exp_training_schedule_<profile>.json``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from sklearn.metrics import roc_auc_score

from benchmarks.common import write_result
from utils import config
from utils.inference.batch import predict_runs
from utils.training.config import TrainConfig
from utils.training.fit import fit_variant
from utils.training.modelcard import read_model_card
from utils.training.patients import prepare_data

SETTINGS = {"default": {}, "pcr_gradient": {"pcr_gradient": True},
            "no_readout": {"readout": False}}


def run(profile: config.Profile, name: str, changes: dict, root: Path, variant: str = "full",
        cfg: TrainConfig | None = None) -> dict:
    """Train ``variant`` with ``TrainConfig(**changes)`` (or ``cfg``) in a temporary run folder
    on the profile's cache; its validation AUCs, readout and wall time."""
    base = config.get_paths(profile.name)
    paths = config.Paths(base.manifest, base.cache_dir, root / name, root / name / "results")
    data = prepare_data(profile, paths)
    cfg = (cfg or TrainConfig(**changes)).resolved(profile)
    start = time.perf_counter()
    result = fit_variant(variant, data, profile, cfg, paths, resume=False)
    table = predict_runs(paths, [result.model_path.stem], data)
    card = read_model_card(result.model_path) or {}
    row = {"setting": name, "variant": variant, "changes": changes,
           "seconds": time.perf_counter() - start, "best_epoch": result.best_epoch,
           "epochs_run": result.epochs_run,
           "readout": (card.get("readout") or {}).get("features"),
           "readout_oof_auc": (card.get("readout") or {}).get("oof_auc")}
    for cohort in ("internal_validation", "external_validation"):
        rows = table[table["cohort"] == cohort]
        row[f"auc_{cohort}"] = float(roc_auc_score(rows["pcr"], rows["score"]))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="demo", choices=sorted(config.PROFILES))
    args = parser.parse_args()
    profile = config.get_profile(args.profile)
    with tempfile.TemporaryDirectory() as tmp:
        rows = [run(profile, name, changes, Path(tmp)) for name, changes in SETTINGS.items()]
    path = write_result(f"exp_training_schedule_{profile.name}",
                        {"profile": profile.name, "variant": "full", "seed": 0, "runs": rows})
    print(json.dumps(rows, indent=1))
    print(f"wrote {path.name}")


if __name__ == "__main__":
    main()
