"""The preprocessing command line, and the options it shares with prediction's.

``python -m utils.preprocessing --manifest PATH --out DIR [--profile NAME] [--workers N]
[--registration {strict,flag,identity}] [--spacing Z,Y,X] [--roi Z,Y,X[mm]]
[--reference-sequence NAME] [--localisation CSV|none]`` (``python -m utils.preprocess`` is the
same) runs :func:`utils.preprocessing.run.run_preprocessing`.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from utils.cohort.manifest import ManifestError
from utils.config import REFERENCE_SEQUENCE, get_paths, get_profile
from utils.preprocessing.params import PreprocessParams, RoiPlacement, roi_placements
from utils.preprocessing.registration import MODES as REGISTRATION_MODES
from utils.preprocessing.run import run_preprocessing


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m utils.preprocessing`` (or ``utils.preprocess``); 0 when every patient is ok."""
    parser = argparse.ArgumentParser(
        description="Preprocess every patient of a manifest into the cache.")
    parser.add_argument("--manifest", type=Path, default=None,
                        help="manifest CSV (default: the profile's manifest)")
    parser.add_argument("--out", type=Path, default=None, help="cache folder")
    parser.add_argument("--profile", default=None, help="smoke | demo | paper")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--registration", choices=REGISTRATION_MODES, default="strict",
                        help="strict: a registration failing QC is an error; flag: record "
                        "the QC flags and continue; identity: do not register")
    parser.add_argument("--localisation", default=None, metavar="CSV|none",
                        help="validation ROI placements from python -m utils.localisation "
                        "(default without --manifest: the profile's localisation.csv if it "
                        "exists; none: every ROI on its tumour mask)")
    add_params_arguments(parser)
    args = parser.parse_args(argv)
    prof = get_profile(args.profile)
    manifest = args.manifest or get_paths(prof.name).manifest
    try:
        params = params_from_arguments(args, PreprocessParams.from_profile(
            prof, registration=args.registration))
        table = run_preprocessing(manifest, args.out, prof, args.workers, params=params,
                                  progress=not args.no_progress,
                                  placements=_placements(args.localisation, prof.name,
                                                         args.manifest is not None))
    except (ManifestError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0 if (table["status"] == "ok").all() else 1


def _placements(option: str | None, profile: str, own_manifest: bool
                ) -> dict[str, RoiPlacement]:
    """ROI placements from ``--localisation`` (see its help); says which it used. The
    profile's table belongs to the profile's manifest, so another manifest needs the option."""
    if option == "none":
        return {}
    path = Path(option) if option else get_paths(profile).localisation_csv
    if option and not path.exists():
        raise ValueError(f"localisation table {path} does not exist")
    if not option and (own_manifest or not path.exists()):
        print("note: validation ROIs are centred on their tumour masks (run python -m "
              "utils.localisation and pass --localisation for automatic ROIs)", file=sys.stderr)
        return {}
    print(f"ROI placements of validation patients from {path}", file=sys.stderr)
    return roi_placements(pd.read_csv(path))


def _triple(text: str, kind: type) -> tuple:
    """``"4,2,2"`` or ``"4x2x2"`` (z, y, x) as three values of ``kind``."""
    parts = text.replace("x", ",").split(",")
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"expected three values z,y,x, not {text!r}")
    return tuple(kind(p) for p in parts)


def add_params_arguments(parser: argparse.ArgumentParser) -> None:
    """The geometry and sequence options shared by the preprocessing and prediction CLIs."""
    parser.add_argument("--spacing", type=lambda t: _triple(t, float), default=None,
                        metavar="Z,Y,X", help="target voxel spacing in mm (default: profile)")
    parser.add_argument("--roi", default=None, metavar="Z,Y,X[mm]",
                        help="ROI size in voxels (16,40,40) or millimetres (80,80,80mm), "
                        "default: profile")
    parser.add_argument("--reference-sequence", default=None,
                        help=f"sequence whose grid the masks follow (default "
                        f"{REFERENCE_SEQUENCE})")


def roi_voxels(roi: str, spacing_zyx: Sequence[float]) -> tuple[int, int, int]:
    """``"16,40,40"`` voxels, or ``"80,80,80mm"`` converted at ``spacing_zyx`` (rounded up)."""
    if roi.strip().lower().endswith("mm"):
        mm = _triple(roi.strip()[:-2], float)
        return tuple(math.ceil(m / s - 1e-6) for m, s in zip(mm, spacing_zyx,
                                                                    strict=True))
    return _triple(roi, int)


def params_from_arguments(args: argparse.Namespace, base: PreprocessParams
                          ) -> PreprocessParams:
    """``base`` with the CLI's ``--spacing``, ``--roi`` and ``--reference-sequence``."""
    changes: dict[str, Any] = {}
    if args.spacing is not None:
        changes["spacing_zyx"] = args.spacing
    spacing = changes.get("spacing_zyx", base.spacing_zyx)
    if args.roi is not None:
        changes["roi_zyx"] = roi_voxels(args.roi, spacing)
    if args.reference_sequence:
        changes["reference_sequence"] = args.reference_sequence
        if args.reference_sequence not in base.sequences:
            changes["sequences"] = (args.reference_sequence, *base.sequences)
    return dataclasses.replace(base, **changes)
