"""Validate a manifest (every problem at once), and its command line.

``python -m utils.cohort.validate {check,hash,schema} PATH`` (or ``python -m
utils.manifest``): ``check`` prints every problem, each naming the row, the patient and the
file, and exits non-zero; ``hash`` fills the checksum columns; ``schema`` lists the columns.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from utils.cohort.filecheck import check_all_files
from utils.cohort.manifest import COLUMNS, ManifestError, Problem, fill_checksums, load_manifest
from utils.cohort.tablecheck import check_columns, check_design, check_values
from utils.config import REFERENCE_SEQUENCE


def validate_manifest(path: str | os.PathLike, check_files: bool = True,
                      workers: int | None = None, reference: str = REFERENCE_SEQUENCE
                      ) -> list[Problem]:
    """Every problem with the manifest at ``path`` (an empty list means valid).

    ``reference`` names the sequence whose grid the masks and the preprocessing follow.
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
    if check_files:
        problems += check_all_files(load_manifest(path), workers, reference)
    return problems


def require_valid(path: str | os.PathLike, check_files: bool = True,
                  reference: str = REFERENCE_SEQUENCE, workers: int | None = None
                  ) -> pd.DataFrame:
    """Validate, raise :class:`ManifestError` listing every problem, else load."""
    problems = validate_manifest(path, check_files=check_files, workers=workers,
                                 reference=reference)
    if problems:
        raise ManifestError(Path(path), problems)
    return load_manifest(path)


def main(argv: Sequence[str] | None = None) -> int:
    """``check`` (0 when valid), ``hash`` or ``schema`` a manifest."""
    parser = argparse.ArgumentParser(description="Check or hash a data manifest.")
    parser.add_argument("command", choices=["check", "hash", "schema"])
    parser.add_argument("path", nargs="?", default="data_manifest.csv")
    parser.add_argument("--no-files", action="store_true", help="check the table only")
    parser.add_argument("--reference-sequence", default=REFERENCE_SEQUENCE,
                        help="the sequence whose grid masks follow (default %(default)s)")
    args = parser.parse_args(argv)
    if args.command == "schema":
        print("\n".join(f"{name:>13}  {text}" for name, text in COLUMNS.items()))
        return 0
    if args.command == "hash":
        print(f"wrote checksums into {fill_checksums(args.path)}")
        return 0
    problems = validate_manifest(args.path, check_files=not args.no_files,
                                 reference=args.reference_sequence)
    for problem in problems:
        print(problem)
    table = pd.read_csv(args.path) if not problems else None
    if problems:
        print(f"{args.path}: {len(problems)} problem(s)")
        return 1
    print(f"{args.path}: OK ({table['patient_id'].nunique()} patients, {len(table)} images)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
