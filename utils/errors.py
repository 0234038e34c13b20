"""Errors of per-patient preprocessing (``utils.preprocessing.pipeline`` and
``utils.preprocessing.registration``), and how a command line reports bad input."""

from __future__ import annotations

import sys


class PreprocessError(RuntimeError):
    """A patient that cannot be preprocessed; the message names the patient (and file)."""

    def __init__(self, patient_id: str, message: str) -> None:
        super().__init__(f"patient {patient_id}: {message}")
        self.patient_id = patient_id


class InputError(PreprocessError):
    """Missing, unreadable or inconsistent input files."""


class RegistrationError(PreprocessError):
    """Post-to-pre registration failed: no overlap, an ITK failure, or its QC checks."""


class RoiError(PreprocessError):
    """The tumour does not fit in the ROI box, or no ROI centre is available."""


def print_problems(problems: list[str]) -> bool:
    """A command line's input problems on stderr, one per line; True when there were any."""
    if problems:
        print("error: " + "\n       ".join(problems), file=sys.stderr)
    return bool(problems)
