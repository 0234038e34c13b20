"""``python -m utils.training``: train every variant and seed.

The terminal equivalent of notebook 03 for a GPU server without Jupyter. It checks its
inputs before any epoch (the manifest, the cache, the variants, both classes in the training
cohort) and exits 1 with the reason; then trains (resuming each run from its checkpoint,
skipping completed runs). Prediction is the next stage's command,
``python -m utils.inference.batch`` with the same options.

    python -m utils.training --profile demo
    python -m utils.training --manifest my/manifest.csv --cache data/cache/mine \\
        --profile paper --variants full single_task --seeds 3 --out runs/mine
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from utils.config import Paths, add_run_options, parse_run_args
from utils.model.variants import ALL_VARIANTS, VARIANTS


def parser() -> argparse.ArgumentParser:
    cli = argparse.ArgumentParser(prog="python -m utils.training", description=(
        "Train 3D RP-Net's variants on a preprocessed cohort (resumable)."))
    add_run_options(cli, "run folder: models, logs, checkpoints; results/ and figures/ "
                    "inside it (default: the profile's)")
    cli.add_argument("--variants", nargs="+", default=list(ALL_VARIANTS), metavar="VARIANT",
                     help=f"variants to train (default: all): {', '.join(VARIANTS)}")
    cli.add_argument("--seeds", type=int, default=None,
                     help="replicas of the seeded variants (default: the profile's)")
    cli.add_argument("--epochs", type=int, default=None, help="default: the profile's")
    cli.add_argument("--fresh", action="store_true",
                     help="retrain from scratch instead of resuming")
    cli.add_argument("--no-progress", action="store_true")
    return cli


def input_problems(args: argparse.Namespace, paths: Paths) -> list[str]:
    """What is wrong with the inputs, checked before anything is trained or written."""
    problems = [f"unknown variant {v!r}; choose from {', '.join(VARIANTS)}"
                for v in args.variants if v not in VARIANTS]
    if args.seeds is not None and args.seeds < 1:
        problems.append(f"--seeds must be at least 1, not {args.seeds}")
    if args.epochs is not None and args.epochs < 1:
        problems.append(f"--epochs must be at least 1, not {args.epochs}")
    if not paths.manifest.is_file():
        problems.append(f"manifest {paths.manifest} not found")
    if not paths.processed_csv.is_file():
        problems.append(f"no preprocessed cache in {paths.cache_dir} (no "
                        f"{paths.processed_csv.name}): run python -m utils.preprocessing "
                        f"--manifest {paths.manifest} --out {paths.cache_dir} first")
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    """Train; 0 on success, 1 with a message on bad input."""
    if (parsed := parse_run_args(parser(), argv, input_problems)) is None:
        return 1
    args, profile, paths = parsed
    from utils.training.config import TrainConfig
    from utils.training.patients import prepare_data
    from utils.training.runner import train_all

    cfg = TrainConfig(epochs=args.epochs)
    try:
        data = prepare_data(profile, paths, cfg.resolved(profile).tune_fraction)
    except (FileNotFoundError, ValueError) as error:  # a bad manifest, cache or cohort
        print(f"error: {error}", file=sys.stderr)
        return 1
    runs = train_all(profile, args.variants, cfg, paths, seeds=args.seeds,
                     resume=not args.fresh, progress=not args.no_progress, data=data)
    print(f"trained {len(runs)} runs into {paths.models_dir}; next: python -m "
          "utils.inference.batch with the same options")
    return 0
