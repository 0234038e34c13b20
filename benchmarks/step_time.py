"""Seconds per training step of one variant, built and compiled exactly as training does.

Usage: ``.venv/bin/python -m benchmarks.step_time --profile demo [--variant full] [--steps 5]``

Random data of the profile's ROI (two channels); one warm-up epoch of ``steps`` batches (graph
tracing), then one timed epoch. Writes ``benchmarks/results/step_time_<profile>_<variant>.json``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from benchmarks.common import write_result
from utils import config
from utils.model.variants import VARIANTS
from utils.training.config import TrainConfig
from utils.training.distribute import setup_device
from utils.training.fit import build_compiled


def measure_step_time(profile: config.Profile | str | None = None, variant: str = "full",
                      batch_size: int | None = None, steps: int = 5) -> dict[str, float]:
    """Seconds per training step of a variant on random data (after one warm-up epoch)."""
    prof = config.as_profile(profile)
    bs = batch_size or prof.batch_size
    device = setup_device("auto")
    shape = (*prof.roi_zyx, len(config.SEQUENCES))
    model = build_compiled(variant, prof, TrainConfig().resolved(prof), shape, device)
    rng = np.random.default_rng(0)
    spec = VARIANTS[variant]
    x = {b: rng.normal(size=(bs * steps, *shape)).astype(np.float32) for b in spec.inputs}
    y = {k: (rng.random((bs * steps, *shape[:3], 1)) > 0.9).astype(np.float32)
         for k in spec.outputs if k != "pcr"}
    y["pcr"] = (np.arange(bs * steps) % 2).astype(np.float32)[:, None]
    t0 = time.perf_counter()
    model.fit(x, y, batch_size=bs, epochs=1, verbose=0, shuffle=False)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    model.fit(x, y, batch_size=bs, epochs=1, verbose=0, shuffle=False)
    step = (time.perf_counter() - t0) / steps
    return {"step_s": step, "first_epoch_s": first, "batch_size": bs,
            "samples_per_s": bs / step}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="demo", choices=sorted(config.PROFILES))
    parser.add_argument("--variant", default="full", choices=sorted(VARIANTS))
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    result = measure_step_time(args.profile, args.variant, steps=args.steps)
    path = write_result(f"step_time_{args.profile}_{args.variant}",
                        {"profile": args.profile, "variant": args.variant, **result})
    print(f"{args.variant}, {args.profile}: {result['step_s']:.3f} s per step of "
          f"{result['batch_size']} ({result['samples_per_s']:.1f} samples/s); first epoch "
          f"{result['first_epoch_s']:.1f} s; wrote {path.name}")


if __name__ == "__main__":
    main()
