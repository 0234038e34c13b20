"""Train the localiser on the training cohort and place every validation patient's ROI.

:func:`run_localisation` reads each patient's pre exam from the manifest (in parallel),
trains the localiser on the training cohort's exams and masks, and writes
``localisation.csv`` (:attr:`utils.config.Paths.localisation_csv`): one row per validation
patient with the predicted ROI centre (physical x, y, z in mm), whether a component above
the threshold was found and its size. Validation masks are never read here.
:func:`utils.preprocessing.params.roi_placements` turns the table into the ``placements`` of
:func:`utils.preprocessing.run.run_preprocessing`; :mod:`utils.localisation.report` scores the
placed ROIs against the ground truth afterwards (from ``processed.csv``).
"""

from __future__ import annotations

import dataclasses
import os

import pandas as pd

from utils.cohort.manifest import cohort_sequences, load_manifest
from utils.config import Paths, Profile, as_profile
from utils.io import write_text_atomic
from utils.localisation.coarse import LocaliserConfig, coarse_cohort, grid_image
from utils.localisation.locate import locate
from utils.localisation.model import fit_localiser, predict_maps
from utils.preprocessing.params import LOCALISATION_COLUMNS, PreprocessParams


# --------------------------------------------------------------------------- the stage
def run_localisation(paths: Paths, profile: Profile | str | None = None,
                     params: PreprocessParams | None = None, workers: int | None = None,
                     progress: bool = True) -> pd.DataFrame:
    """Train the localiser on the training cohort, locate every other patient's tumour and
    write ``localisation.csv`` (returned). Retrained on every call (about a minute, demo)."""
    prof = as_profile(profile)
    cfg = LocaliserConfig.for_profile(prof)
    manifest = load_manifest(paths.manifest)
    params = params or PreprocessParams.from_profile(prof)
    params = dataclasses.replace(params, sequences=cohort_sequences(
        manifest, params.reference_sequence))
    cohorts = manifest.groupby("patient_id")["cohort"].first()
    training = sorted(cohorts.index[cohorts == "training"])
    others = sorted(cohorts.index[cohorts != "training"])
    if not training:
        raise ValueError(f"{paths.manifest}: no training-cohort patient to train the localiser")
    workers = workers or os.cpu_count() or 1
    # every input is read before anything is written: a bad file leaves no new model
    x, y, _ = coarse_cohort(manifest, training, cfg, params, True, workers, progress,
                            "coarse training")
    xv, _, grids = (coarse_cohort(manifest, others, cfg, params, False, workers, progress,
                                  "coarse validation") if others else (None, None, []))
    card = {"sequences": list(params.sequences), "preprocessing": params.to_dict(),
            "profile": prof.name}
    model = fit_localiser(x, y, cfg, prof.seed, paths.localiser_model, card)
    maps = predict_maps(model, xv, cfg.batch_size) if others else []
    rows = [{"patient_id": pid, "cohort": cohorts[pid],
             **locate(prob, grid_image(geom), cfg.threshold)}
            for pid, prob, geom in zip(others, maps, grids, strict=True)]
    table = pd.DataFrame(rows, columns=LOCALISATION_COLUMNS)
    write_text_atomic(paths.localisation_csv, table.to_csv(index=False))
    return table
