"""Does the augmenting loader keep up with training? Batches/s delivered vs consumed.

Usage: ``.venv/bin/python benchmarks/bench_loader.py --profile demo [--batches 24]``

1. Loader: batches/s of :class:`utils.training.dataset.RPNetDataset` (training mode: balanced
   sampling, spatial + intensity augmentation) in one thread, over ``--batches`` batches of a
   fresh epoch.
   Data: the profile's preprocessing cache if present, else random arrays of the cached shapes
   (augmentation cost does not depend on the values).
2. Training: batches/s of ``train_on_batch`` for the profile's ``full`` model (after warm-up,
   the same batch size), on this machine's default device.

The ratio loader / training is the headroom (target >= 3: the loader then needs less than a
third of one core's time per step, and ``workers`` can stay 1). Writes
``benchmarks/results/bench_loader_<profile>.json``.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from utils import config
from utils.io import write_json_atomic
from utils.repro import versions
from utils.training import distribute
from utils.training.config import TrainConfig
from utils.training.dataset import RPNetDataset
from utils.training.fit import build_compiled
from utils.training.patients import PatientArrays, load_patients

RESULTS = Path(__file__).resolve().parent / "results"


def synthetic_arrays(profile: config.Profile, n: int = 40) -> dict[str, PatientArrays]:
    """Random patients with the profile's ROI shape and a cubic tumour."""
    rng = np.random.default_rng(0)
    shape = (*profile.roi_zyx, len(config.SEQUENCES))
    out = {}
    for i in range(n):
        mask = np.zeros(profile.roi_zyx, np.uint8)
        z, y, x = (s // 2 for s in profile.roi_zyx)
        mask[z - 2:z + 2, y - 6:y + 6, x - 6:x + 6] = 1
        images = [rng.normal(size=shape).astype(np.float32) for _ in range(2)]
        out[f"P{i:03d}"] = PatientArrays(f"P{i:03d}", "training", "A", int(i % 4 == 0),
                                           images[0], images[1], mask, mask.copy(),
                                           np.asarray(profile.spacing_zyx, float))
    return out


def cached_arrays(profile: config.Profile, cache_dir: Path | None = None
                  ) -> dict[str, PatientArrays] | None:
    paths = config.get_paths(profile.name)
    cache_dir = cache_dir or paths.cache_dir
    if not (cache_dir / "processed.csv").exists() or not paths.manifest.exists():
        return None
    from utils.cohort.manifest import load_manifest, patient_table

    patients = patient_table(load_manifest(paths.manifest))
    arrays, _ = load_patients(cache_dir, patients[patients["cohort"] == "training"])
    return arrays or None


def loader_rate(arrays: dict[str, PatientArrays], batch_size: int, n_batches: int,
                seed: int) -> float:
    ds = RPNetDataset(arrays, sorted(arrays), "full", batch_size, training=True, seed=seed,
                        pcr_fraction=0.5, steps_per_epoch=n_batches)
    ds[0]  # warm-up (imports, caches)
    ds.epoch = 1
    start = time.perf_counter()
    for i in range(n_batches):
        ds[i]
    return n_batches / (time.perf_counter() - start)


def train_rate(arrays: dict[str, PatientArrays], profile: config.Profile, batch_size: int,
               steps: int) -> tuple[float, float]:
    """(batches/s after warm-up, first-step seconds) of train_on_batch for ``full``."""
    device = distribute.setup_device()
    cfg = TrainConfig().resolved(profile)
    shape = next(iter(arrays.values())).image_pre.shape
    model = build_compiled("full", profile, cfg, shape, device)
    ds = RPNetDataset(arrays, sorted(arrays), "full", batch_size, training=False)
    x, y = ds[0]
    start = time.perf_counter()
    model.train_on_batch(x, y)
    first = time.perf_counter() - start
    model.train_on_batch(x, y)
    start = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(x, y)
    return steps / (time.perf_counter() - start), first


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", default="demo")
    parser.add_argument("--batches", type=int, default=24, help="loader batches to time")
    parser.add_argument("--steps", type=int, default=6, help="training steps to time")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--cache", type=Path, default=None, help="cache folder (default: the "
                        "profile's)")
    args = parser.parse_args(argv)
    profile = config.get_profile(args.profile)
    bs = args.batch_size or profile.batch_size
    arrays = cached_arrays(profile, args.cache)
    source = "cache" if arrays else "synthetic"
    arrays = arrays or synthetic_arrays(profile)
    load_before = os.getloadavg()
    loader = loader_rate(arrays, bs, args.batches, profile.seed)
    training, first = train_rate(arrays, profile, bs, args.steps)
    result = {"profile": profile.name, "batch_size": bs, "data": source,
              "roi_zyx": list(profile.roi_zyx), "loader_batches_per_s": loader,
              "loader_ms_per_sample": 1000 / (loader * bs),
              "train_batches_per_s": training, "train_first_step_s": first,
              "ratio_loader_over_train": loader / training, "target_ratio": 3.0,
              "device": distribute.device_summary().replace("\n", "; "),
              "loadavg_before": list(load_before), "loadavg_after": list(os.getloadavg()),
              "cpu_count": os.cpu_count(), "versions": versions()}
    target = write_json_atomic(RESULTS / f"bench_loader_{profile.name}.json", result)
    print(f"loader {loader:.1f} batches/s ({result['loader_ms_per_sample']:.1f} ms/sample, "
          f"{source} data), training {training:.2f} batches/s -> ratio "
          f"{result['ratio_loader_over_train']:.1f}x (target >= 3)")
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
