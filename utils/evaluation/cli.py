"""``python -m utils.evaluation``: the evaluation of notebook 04 from a terminal.

Reads ``results/predictions.csv`` (written by ``python -m utils.inference.batch``), the split,
folds, predicted masks, cache and manifest of the run; writes the results tables,
``metrics.json`` and every figure of notebook 04, and prints README's results table.

    python -m utils.evaluation --profile demo
    python -m utils.evaluation --profile paper --manifest my/manifest.csv \\
        --cache data/cache/mine --out runs/mine
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from utils.config import MANIFEST_ENV, Paths, add_run_options, parse_run_args


def parser() -> argparse.ArgumentParser:
    cli = argparse.ArgumentParser(prog="python -m utils.evaluation", description=(
        "ROC/AUC with CIs, paired DeLong tests, Dice/HD95, calibration, decision curves and "
        "the figures of notebook 04, from a trained run's predictions."))
    add_run_options(cli, "the run folder given to python -m utils.training (default: the "
                    "profile's); results/ and figures/ are written inside it")
    cli.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples")
    cli.add_argument("--seed", type=int, default=2021, help="bootstrap seed")
    return cli


def input_problems(args: argparse.Namespace, paths: Paths) -> list[str]:
    """What is missing or wrong, checked before anything is written."""
    problems = []
    if args.n_boot < 100:
        problems.append(f"--n-boot must be at least 100, not {args.n_boot}")
    if not paths.predictions_csv.is_file():
        problems.append(f"no predictions at {paths.predictions_csv}: run python -m "
                        "utils.training, then python -m utils.inference.batch, with the same "
                        "--profile/--out first")
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    """Evaluate and write; 0 on success, 1 with a message on bad input."""
    if (parsed := parse_run_args(parser(), argv, input_problems)) is None:
        return 1
    args, profile, paths = parsed
    from utils.cohort.manifest import load_manifest, patient_table
    from utils.evaluation import figureset, report, results
    from utils.evaluation.evaluate import run_evaluation
    from utils.evaluation.predictions import load_predictions, read_optional_csv

    try:
        predictions = load_predictions(paths.predictions_csv)
        patients = patient_table(load_manifest(paths.manifest)) if paths.manifest.exists() \
            else None
    except ValueError as error:  # a damaged predictions table or manifest
        print(f"error: {error}", file=sys.stderr)
        return 1
    user = args.manifest is not None or bool(os.environ.get(MANIFEST_ENV))
    label = "user cohort" if user else "phantom (synthetic)"  # notebook 04's DATA_LABEL
    evaluation = run_evaluation(
        predictions, patients, split=read_optional_csv(paths.split_csv),
        oracle=read_optional_csv(paths.oracle) if paths.oracle else None,
        masks_dir=paths.predicted_masks_dir, cache_dir=paths.cache_dir, profile=profile.name,
        data_label=label, n_boot=args.n_boot, seed=args.seed,
        folds=read_optional_csv(paths.folds_csv))
    written = results.write_tables(paths.results_dir, evaluation.tables())
    written.append(results.write_metrics(paths.results_dir, evaluation.metrics))
    figures = figureset.write_figures(evaluation, paths, f"{label}, {profile.name} profile")
    print(f"wrote {len(written)} tables in {paths.results_dir}, {len(figures)} figure files "
          f"in {paths.figures_dir}")
    print(report.readme_results_table(evaluation.metrics))
    return 0
