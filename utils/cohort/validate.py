"""Validate a manifest (every problem at once), and its command line.

``python -m utils.cohort.validate {check,hash,schema} PATH`` (or ``python -m
utils.manifest``): ``check`` prints every problem, each naming the row, the patient and the
file, and exits non-zero; warnings (``warning: ...``, things that may be right) are printed
too but leave the exit status 0. ``hash`` fills the checksum columns; ``schema`` lists the
columns. ``check --profile NAME`` (default ``$RPNET_PROFILE``) judges each tumour against
that profile's ROI box and the reference grids against its spacing.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pandas as pd

from utils.cohort.filecheck import check_all_files
from utils.cohort.manifest import (
    COLUMNS,
    ManifestError,
    Problem,
    errors_of,
    fill_checksums,
    load_manifest,
)
from utils.cohort.tablecheck import (
    check_columns,
    check_design,
    check_values,
    class_count_warnings,
)
from utils.config import PROFILES, REFERENCE_SEQUENCE, Profile, as_profile

MAX_SHOWN_WARNINGS = 3  # require_valid prints these many warnings, then a count


def validate_manifest(path: str | os.PathLike, check_files: bool = True,
                      workers: int | None = None, reference: str = REFERENCE_SEQUENCE,
                      profile: Profile | str | None = None) -> list[Problem]:
    """Every problem with the manifest at ``path``, warnings included (``Problem.warning``;
    no problem but warnings means valid, :func:`utils.cohort.manifest.errors_of`).

    ``reference`` names the sequence whose grid the masks and the preprocessing follow;
    ``profile`` (default ``$RPNET_PROFILE``) gives the ROI box and spacing checked against.
    """
    path = Path(path)
    if not path.exists():
        return [Problem("manifest file does not exist", file=str(path))]
    try:
        table = pd.read_csv(path, dtype={"patient_id": str, "centre": str})
    except Exception as error:
        return [Problem(f"cannot parse CSV: {error}", file=str(path))]
    problems = check_columns(table)
    if problems:
        return problems
    problems += check_values(table) + check_design(table, reference)
    problems += class_count_warnings(table)
    if check_files:
        problems += check_all_files(load_manifest(path), workers, reference,
                                    as_profile(profile))
    return problems


def require_valid(path: str | os.PathLike, check_files: bool = True,
                  reference: str = REFERENCE_SEQUENCE, workers: int | None = None,
                  profile: Profile | str | None = None) -> pd.DataFrame:
    """Validate, raise :class:`ManifestError` listing every error, else print the
    warnings (stderr) and load."""
    problems = validate_manifest(path, check_files=check_files, workers=workers,
                                 reference=reference, profile=profile)
    if errors := errors_of(problems):
        raise ManifestError(Path(path), errors)
    if problems:
        print(warning_summary(path, problems), file=sys.stderr)
    return load_manifest(path)


def warning_summary(path: str | os.PathLike, warnings: Sequence[Problem],
                    shown: int = MAX_SHOWN_WARNINGS) -> str:
    """The first ``shown`` warnings (files relative to the manifest's folder) and a count of
    the rest, which ``check`` lists in full."""
    base = Path(path).resolve().parent
    lines = [str(replace(w, file=_relative(w.file, base))) for w in warnings[:shown]]
    if len(warnings) > shown:
        lines.append(f"... and {len(warnings) - shown} more warning(s): "
                     f"python -m utils.cohort.validate check {Path(path).name} lists them all")
    return "\n".join(lines)


def _relative(file: str | None, base: Path) -> str | None:
    """``file`` relative to ``base`` when it lies below it."""
    if not file:
        return file
    try:
        return str(Path(file).resolve().relative_to(base))
    except ValueError:
        return file


def main(argv: Sequence[str] | None = None) -> int:
    """``check`` (0 when valid), ``hash`` or ``schema`` a manifest."""
    parser = argparse.ArgumentParser(description="Check or hash a data manifest.")
    parser.add_argument("command", choices=["check", "hash", "schema"])
    parser.add_argument("path", nargs="?", default="data_manifest.csv")
    parser.add_argument("--no-files", action="store_true", help="check the table only")
    parser.add_argument("--reference-sequence", default=REFERENCE_SEQUENCE,
                        help="the sequence whose grid masks follow (default %(default)s)")
    parser.add_argument("--profile", choices=sorted(PROFILES), default=None,
                        help="ROI box and spacing to check against (default $RPNET_PROFILE)")
    args = parser.parse_args(argv)
    if args.command == "schema":
        print("\n".join(f"{name:>13}  {text}" for name, text in COLUMNS.items()))
        return 0
    if args.command == "hash":
        print(f"wrote checksums into {fill_checksums(args.path)}")
        return 0
    problems = validate_manifest(args.path, check_files=not args.no_files,
                                 reference=args.reference_sequence, profile=args.profile)
    for problem in problems:
        print(problem)
    errors, warned = len(errors_of(problems)), len(problems) - len(errors_of(problems))
    if errors:
        print(f"{args.path}: {errors} problem(s), {warned} warning(s)")
        return 1
    table = pd.read_csv(args.path)
    print(f"{args.path}: OK ({table['patient_id'].nunique()} patients, {len(table)} images"
          + (f"; {warned} warning(s))" if warned else ")"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
