"""Training-step throughput of the RP-Net against this machine's matmul rate.

Usage: ``.venv/bin/python benchmarks/bench_model.py --profile demo [--explore]``

1. Peak: float32 matmul GFLOP/s in this process (NumPy and Keras/TensorFlow; the higher).
2. For the profile's ``full`` model (input ``roi_zyx`` x 2 channels, its depth, base filters
   and batch size): samples/s of ``train_on_batch`` after warm-up, with and without XLA
   (``jit_compile``), and the achieved GFLOP/s, estimating one training step as 3x the
   forward FLOPs per sample (forward + two backward products), with forward FLOPs from
   :func:`utils.model.flops.count_flops` (2 x multiply-adds of conv and dense layers).
3. ``--explore`` adds a doubled batch and doubled base filters, to show what moves the rate
   (written to ``bench_model_<profile>_explore.json``).

Prints a table and writes ``benchmarks/results/bench_model_<profile>.json``. Findings on the
2-core CPU: XLA is 20-30x slower (its CPU 3D convolutions bypass oneDNN), so
:func:`utils.model.compile.compile_rpnet` turns it off for TensorFlow on CPU; the instance
normalisations take about a third of a step (memory-bound, no FLOPs counted); wider layers
raise the fraction of the matmul rate. Other processes on a shared machine lower both
rates: the load averages are recorded with the results.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import keras
import numpy as np

from utils import config
from utils.io import write_json_atomic
from utils.model.compile import compile_rpnet
from utils.model.flops import count_flops
from utils.model.rpnet import build_rpnet
from utils.model.variants import BRANCHES
from utils.repro import versions

RESULTS = Path(__file__).resolve().parent / "results"
TRAIN_FACTOR = 3  # training step ~ forward + backward (input and weight gradients)
XLA_STEPS = 1  # XLA's CPU 3D convolutions are slow: no second warm-up, one timed step


@dataclass
class Case:
    """One measured configuration."""

    label: str
    jit_compile: bool
    batch_size: int
    base_filters: int
    depth: int
    input_shape: tuple[int, ...]
    forward_gflop_per_sample: float = 0.0
    first_step_s: float = 0.0
    step_s_median: float = 0.0
    samples_per_s: float = 0.0
    achieved_gflops: float = 0.0
    fraction_of_matmul: float = 0.0


def matmul_gflops(n: int = 2048, seconds: float = 2.0) -> dict[str, float]:
    """Best float32 matmul rate (GFLOP/s) of NumPy and of keras.ops (backend) over repeats."""
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))
    flop = 2.0 * n**3
    ta, tb = keras.ops.convert_to_tensor(a), keras.ops.convert_to_tensor(b)
    runners = {"numpy": lambda: a @ b,
               "keras": lambda: keras.ops.convert_to_numpy(keras.ops.matmul(ta, tb))}
    return {name: flop / _best_time(run, seconds) / 1e9 for name, run in runners.items()}


def _best_time(run, seconds: float) -> float:
    run()  # warm-up
    best, start = float("inf"), time.perf_counter()
    while time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - t0)
    return best


def _batch(shape: tuple[int, ...], batch: int, seed: int = 0) -> tuple[dict, dict]:
    rng = np.random.default_rng(seed)
    x = {b: rng.standard_normal((batch, *shape), dtype=np.float32) for b in BRANCHES}
    y = {m: (rng.random((batch, *shape[:3], 1)) > 0.9).astype("float32")
         for m in ("mask_pre", "mask_post")}
    y["pcr"] = (np.arange(batch) % 2).astype("float32")[:, None]
    return x, y


def measure(case: Case, steps: int, peak: float) -> Case:
    """Build, compile and time ``steps`` training steps of the full model after warm-up."""
    keras.utils.clear_session()
    model = build_rpnet(case.input_shape, "full", depth=case.depth,
                          base_filters=case.base_filters, seed=0)
    compile_rpnet(model, "full", jit_compile=case.jit_compile)
    case.forward_gflop_per_sample = count_flops(model) / 1e9
    x, y = _batch(case.input_shape, case.batch_size)
    t0 = time.perf_counter()
    model.train_on_batch(x, y)  # traces (and with XLA compiles) the step
    case.first_step_s = time.perf_counter() - t0
    if not case.jit_compile:
        model.train_on_batch(x, y)  # second warm-up step
    times = []
    for _ in range(min(steps, XLA_STEPS) if case.jit_compile else steps):
        t0 = time.perf_counter()
        model.train_on_batch(x, y)
        times.append(time.perf_counter() - t0)
    case.step_s_median = statistics.median(times)
    case.samples_per_s = case.batch_size / case.step_s_median
    case.achieved_gflops = (TRAIN_FACTOR * case.forward_gflop_per_sample * case.samples_per_s)
    case.fraction_of_matmul = case.achieved_gflops / peak
    return case


def cases_for(profile: config.Profile, modes: list[str], explore: bool) -> list[Case]:
    shape = (*profile.roi_zyx, len(config.SEQUENCES))
    base = {"batch_size": profile.batch_size, "base_filters": profile.base_filters,
                "depth": profile.depth, "input_shape": shape}
    cases = [Case(f"{profile.name} {mode}", mode == "xla", **base) for mode in modes]
    if explore:
        jit = "xla" in modes and "graph" not in modes
        cases.append(Case(f"{profile.name} batch x2", jit, **{
            **base, "batch_size": 2 * profile.batch_size}))
        cases.append(Case(f"{profile.name} filters x2", jit, **{
            **base, "base_filters": 2 * profile.base_filters}))
    return cases


def print_table(peak: dict[str, float], cases: list[Case]) -> None:
    print(f"matmul float32: numpy {peak['numpy']:.1f} GFLOP/s, keras {peak['keras']:.1f} "
          f"GFLOP/s -> peak {max(peak.values()):.1f}")
    head = (f"{'case':<22}{'batch':>6}{'filt':>5}{'fwd GF/s':>9}{'1st step s':>11}"
            f"{'step s':>8}{'samples/s':>10}{'GFLOP/s':>9}{'% matmul':>9}")
    print(head)
    for c in cases:
        print(f"{c.label:<22}{c.batch_size:>6}{c.base_filters:>5}"
              f"{c.forward_gflop_per_sample:>9.2f}{c.first_step_s:>11.1f}{c.step_s_median:>8.2f}"
              f"{c.samples_per_s:>10.2f}{c.achieved_gflops:>9.1f}"
              f"{100 * c.fraction_of_matmul:>8.1f}%")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="demo", choices=sorted(config.PROFILES))
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 8; 2 "
                        "for paper)")
    parser.add_argument("--modes", default=None, help="comma list of graph,xla (default both;"
                        " graph only for paper)")
    parser.add_argument("--explore", action="store_true", help="also batch x2, filters x2")
    args = parser.parse_args(argv)
    profile = config.get_profile(args.profile)
    is_paper = profile.name == "paper"
    steps = args.steps or (2 if is_paper else 8)
    modes = (args.modes or ("graph" if is_paper else "graph,xla")).split(",")
    load_before = os.getloadavg()
    peak = matmul_gflops()
    cases = [measure(c, steps, max(peak.values()))
             for c in cases_for(profile, modes, args.explore)]
    print_table(peak, cases)
    result = {"profile": profile.name, "matmul_gflops": peak, "peak_gflops": max(peak.values()),
              "train_flop_factor": TRAIN_FACTOR, "timed_steps": steps,
              "cases": [asdict(c) for c in cases], "cpu_count": os.cpu_count(),
              "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
              "versions": versions()}
    suffix = "_explore" if args.explore else ""
    target = RESULTS / f"bench_model_{profile.name}{suffix}.json"
    write_json_atomic(target, result)
    print(f"wrote {target.relative_to(RESULTS.parent.parent)}")
    return result


if __name__ == "__main__":
    main()
