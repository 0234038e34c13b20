"""A synthetic contract-format cache (24 patients, no images) for the training tests.

Shared by test_data, test_train, test_backends and test_multiworker (whose worker scripts
import it from the tests folder).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from tests.conftest import tiny_profile
from utils import config
from utils.io import save_npz_atomic
from utils.training.config import TrainConfig

ROI = (8, 16, 16)
SPACING = (4.0, 2.0, 2.0)
COHORT_SIZES = {"training": 16, "internal_validation": 4, "external_validation": 4}
CFG = TrainConfig(steps_per_epoch=2, pcr_fraction=0.5, plateau_patience=1)


# conftest's test profile at this cohort's sizes, ROI and a tiny network
PROFILE = tiny_profile(n_training=16, n_internal=4, n_external=4, roi_zyx=ROI,
                       spacing_zyx=SPACING, depth=3, base_filters=4, epochs=2, batch_size=4,
                       learning_rate=1e-3)


def _patient_arrays(rng: np.random.Generator, pcr: int) -> dict[str, np.ndarray]:
    """A bright cube (pre) that shrinks after treatment, more so with pCR."""
    images, masks = [], []
    for half in (3, 1 if pcr else 2):
        mask = np.zeros(ROI, np.uint8)
        c = rng.integers(3, 5), rng.integers(6, 10), rng.integers(6, 10)
        mask[c[0] - 1:c[0] + 1, c[1] - half:c[1] + half, c[2] - half:c[2] + half] = 1
        image = rng.normal(0, 0.3, (*ROI, 2)).astype(np.float32) + 2.0 * mask[..., None]
        images.append(image)
        masks.append(mask)
    return {"image_pre": images[0], "image_post": images[1], "mask_pre": masks[0],
            "mask_post": masks[1], "spacing_zyx": np.array(SPACING),
            "meta_json": np.array(json.dumps({"synthetic": True}))}


def write_synthetic_cohort(root: Path) -> config.Paths:
    """Contract-format cache, processed.csv and a minimal manifest (no images needed)."""
    rng = np.random.default_rng(0)
    rows = []
    for cohort, n in COHORT_SIZES.items():
        for i in range(n):
            pid = f"{cohort[:2].upper()}{i:03d}"
            pcr = int(i % 3 == 0)
            save_npz_atomic(root / "cache" / f"{pid}.npz", **_patient_arrays(rng, pcr))
            rows.append({"patient_id": pid, "cohort": cohort, "centre": "A" if i % 2 else "B",
                         "timepoint": "pre", "sequence": "T2W", "image_path": f"{pid}.nii.gz",
                         "mask_path": f"{pid}_mask.nii.gz", "pcr": pcr, "cea_pre": 1.0,
                         "cea_post": 1.0, "ca199_pre": 1.0, "ca199_post": 1.0,
                         "image_sha256": "x", "mask_sha256": "y"})
    manifest = pd.DataFrame(rows)
    manifest.to_csv(root / "manifest.csv", index=False)
    manifest.assign(status="ok")[["patient_id", "cohort", "centre", "status"]].to_csv(
        root / "cache" / "processed.csv", index=False)
    return paths_under(root, "run")


def paths_under(root: Path, run: str) -> config.Paths:
    return config.Paths(root / "manifest.csv", root / "cache", root / run, root / run / "results")
