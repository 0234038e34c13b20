"""``python -m utils.localisation [--profile P] [--manifest M --out RUN_DIR]``: train the
localiser on the training cohort and write the validation patients' ROI centres
(``RUN_DIR/localiser/localisation.csv``; default run folder: the profile's)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path

from utils.config import get_paths, get_profile


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default=None, help="smoke, demo or paper (default: "
                        "RPNET_PROFILE, else demo)")
    parser.add_argument("--manifest", default=None, help="manifest (default: the profile's)")
    parser.add_argument("--out", type=Path, default=None,
                        help="run folder (default: runs/<profile>; needed with --manifest)")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: cores)")
    args = parser.parse_args(argv)
    from utils.localisation.run import run_localisation

    profile = get_profile(args.profile)
    paths = get_paths(profile)
    if args.manifest and not args.out:
        parser.error("--manifest needs --out RUN_DIR (the profile's run folder belongs to "
                     "the profile's manifest)")
    if args.manifest:
        paths = dataclasses.replace(paths, manifest=Path(args.manifest), run_dir=args.out)
    try:
        table = run_localisation(paths, profile, workers=args.workers)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"localised {len(table)} patients ({int(table['found'].sum())} with a component "
          f"above threshold); wrote {paths.localisation_csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
