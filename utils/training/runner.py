"""Training every variant with one split and one budget (:func:`train_all`), as named steps:

1. :func:`utils.training.patients.prepare_data`: patient table, split, folds, cached arrays;
2. :func:`plan_runs`: the runs, ``Profile.seeds`` replicas of the main model and of the
   ablations that test the paper's claims (:data:`utils.model.variants.SEEDED_VARIANTS`),
   one of the others;
3. :func:`train_run` per run: :func:`utils.training.fit.fit_variant` (resumed from its
   checkpoint, skipped when complete), which writes the model, its card and the readout's
   out-of-fold scores; one progress bar and one summary line.

Prediction of every patient by the trained runs is the next stage:
:func:`utils.inference.batch.predict_runs`.

Budget (2 CPU cores): ``benchmarks/bench_training_budget.py`` splits one demo training into
steps x the bare step time, graph tracing, tune evaluation, checkpoints and the readout refit
(README, "Speed").
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import pandas as pd

from utils.config import Paths, Profile, as_profile, get_paths
from utils.model.variants import ALL_VARIANTS, SEEDED_VARIANTS, VARIANTS
from utils.progress import progress_bar
from utils.training.config import TrainConfig
from utils.training.dataset import RPNetDataset
from utils.training.fit import FitResult, fit_variant
from utils.training.modelcard import read_model_card, run_name
from utils.training.patients import TrainData, prepare_data

RUN_COLUMNS = ["run", "variant", "seed", "best_epoch", "oof_auc", "seconds", "skipped"]


def describe_run(data: TrainData, profile: Profile, cfg: TrainConfig) -> str:
    """Cohort sizes, split and training budget in one line."""
    sizes = ", ".join(f"{len(data.ids(cohort=c))} {c.split('_')[0]}" for c in
                      ("training", "internal_validation", "external_validation"))
    fit = data.ids("fit")
    probe = RPNetDataset(data.arrays, fit, "full", cfg.batch_size, training=True,
                         pcr_fraction=cfg.pcr_fraction, steps_per_epoch=cfg.steps_per_epoch)
    return (f"{profile.name}: {sizes} patients; fit {len(fit)}, tune {len(data.ids('tune'))}; "
            f"{cfg.epochs} epochs x {len(probe)} steps x batch {cfg.batch_size}"
            + (f"; skipped {len(data.skipped)}" if data.skipped else ""))


def plan_runs(variants: Sequence[str], profile: Profile,
              seeds: int | Mapping[str, int] | None = None) -> list[tuple[str, int]]:
    """``(variant, replica)`` of every run, in training order.

    ``seeds``: replicas per variant (an int for all, or a mapping variant -> count; absent
    variants get one); default: ``profile.seeds`` for :data:`SEEDED_VARIANTS`, one otherwise.
    """
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variants {unknown}; choose from {ALL_VARIANTS}")
    if seeds is None:
        seeds = dict.fromkeys(SEEDED_VARIANTS, profile.seeds)
    return [(variant, replica) for variant in variants
            for replica in range(seeds if isinstance(seeds, int) else seeds.get(variant, 1))]


def run_bar(total: int, desc: str, enabled: bool = True) -> Any:
    """One bar per run, updated per epoch (one final line in stored notebooks)."""
    return progress_bar(total, desc, enabled, leave=True, ascii=True, mininterval=5.0,
                        file=sys.stdout, dynamic_ncols=False, ncols=100)


def train_run(variant: str, replica: int, data: TrainData, profile: Profile,
              cfg: TrainConfig, paths: Paths, *, resume: bool = True,
              progress: bool = True) -> dict[str, Any]:
    """Train one run (replica ``replica`` of ``variant``) and print its summary line; returns
    its row of the runs table (:data:`RUN_COLUMNS`)."""
    start = time.perf_counter()
    cfg = replace(cfg, seed=replica)
    run = run_name(variant, replica)
    with run_bar(cfg.epochs, f"{run:>18}", progress) as bar:
        result = fit_variant(variant, data, profile, cfg, paths, resume=resume, progress=bar)
    row = _run_row(run, variant, replica, result, time.perf_counter() - start)
    print(_summary(row))
    return row


def _run_row(run: str, variant: str, replica: int, result: FitResult, seconds: float
             ) -> dict[str, Any]:
    card = read_model_card(result.model_path) or {}
    readout = card.get("readout") or {}
    return {"run": run, "variant": variant, "seed": replica, "best_epoch": result.best_epoch + 1,
            "oof_auc": readout.get("oof_auc", float("nan")), "seconds": seconds,
            "skipped": result.skipped}


def _summary(row: Mapping[str, Any]) -> str:
    status = "cached" if row["skipped"] else f"{row['seconds']:.0f} s"
    return (f"{row['run']:>18}: best epoch {row['best_epoch']}, readout out-of-fold AUC "
            f"{row['oof_auc']:.3f} ({status})")


def train_all(profile: Profile | str | None = None, variants: Sequence[str] = ALL_VARIANTS,
              config: TrainConfig | None = None, paths: Paths | None = None, *,
              seeds: int | Mapping[str, int] | None = None, resume: bool = True,
              progress: bool = True, data: TrainData | None = None) -> pd.DataFrame:
    """Train the main model and every ablation with one split and one budget.

    Writes ``models/<run>.keras`` with its card, ``logs/<run>/training.csv``,
    ``readout/<run>.csv``, ``results/split.csv`` and ``results/folds.csv``; returns the runs
    table (:data:`RUN_COLUMNS`). ``data``: the prepared data (default: prepared here).
    Completed runs are not retrained (``resume=False`` retrains everything).
    """
    prof = as_profile(profile)
    cfg = (config or TrainConfig()).resolved(prof)
    paths = paths or get_paths(prof.name)
    plan = plan_runs(variants, prof, seeds)
    data = data if data is not None else prepare_data(prof, paths, cfg.tune_fraction)
    print(describe_run(data, prof, cfg))
    if data.skipped:
        print(f"  skipped (no usable cache): {', '.join(sorted(data.skipped)[:12])}"
              + (" ..." if len(data.skipped) > 12 else ""))
    rows = [train_run(variant, replica, data, prof, cfg, paths, resume=resume,
                      progress=progress) for variant, replica in plan]
    return pd.DataFrame(rows, columns=RUN_COLUMNS)
