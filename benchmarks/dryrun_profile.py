"""Will it fit? A profile's network at its real input size and batch, one training step on CPU.

Usage: ``.venv/bin/python benchmarks/dryrun_profile.py --profile paper`` (``make dryrun``)

Builds the profile's ``full`` model at its ROI size (two channels), compiles it as training
does and runs training steps on random data of the profile's batch size: the first step
(graph tracing included) and a second, timed one. Reports parameters, the forward
activations kept for the backward pass (sum of every layer call's output, both branches),
per sample in float32 and in bfloat16, the process's peak resident memory, and an estimate of
the GPU memory a training step needs at several batch sizes against 16 / 24 / 80 GB cards
(weights + Adam moments + gradients in float32, activations x 2 for their gradients).
Writes ``benchmarks/results/dryrun_<profile>.json``.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import psutil

from benchmarks.common import write_result
from utils import config
from utils.model.compile import compile_rpnet
from utils.model.flops import count_flops, graph_nodes, parameter_counts
from utils.model.rpnet import build_rpnet
from utils.model.variants import BRANCHES

GIB = 1024**3
CARDS_GB = (16, 24, 80)


def activation_elements(model) -> int:
    """Elements of every layer call's output per sample (nested backbone calls included)."""
    total = 0
    for node in graph_nodes(model):
        layer = node.operation
        if hasattr(layer, "layers") and layer is not model and hasattr(layer, "_nodes_by_depth"):
            total += activation_elements(layer)
            continue
        for tensor in node.output_tensors:
            total += math.prod(int(d) for d in tensor.shape[1:])
    return total


def step_memory_gb(params: int, activations_per_sample: int, batch: int, bytes_act: int) -> float:
    """Training-step memory: float32 weights, gradients and two Adam moments, plus the
    activations and their gradients."""
    return (4 * params * 4 + 2 * activations_per_sample * bytes_act * batch) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="paper", choices=sorted(config.PROFILES))
    args = parser.parse_args()
    profile = config.get_profile(args.profile)
    shape = (*profile.roi_zyx, len(config.SEQUENCES))
    model = compile_rpnet(build_rpnet(shape, "full", depth=profile.depth,
                                            base_filters=profile.base_filters,
                                            seed=profile.seed), "full",
                             learning_rate=profile.learning_rate)
    params = parameter_counts(model)["total"]
    acts = activation_elements(model)
    rng = np.random.default_rng(0)
    batch = profile.batch_size
    x = {b: rng.normal(size=(batch, *shape)).astype("float32") for b in BRANCHES}
    y = {k: (rng.random((batch, *shape[:3], 1)) > 0.9).astype("float32")
         for k in ("mask_pre", "mask_post")}
    y["pcr"] = (np.arange(batch) % 2).astype("float32")[:, None]
    times = []
    for _ in range(4):
        start = time.perf_counter()
        logs = model.train_on_batch(x, y, return_dict=True)
        times.append(time.perf_counter() - start)
    step = float(np.median(times[1:]))
    rss = psutil.Process().memory_info().rss / GIB
    fits = {}
    for bytes_act, precision in ((4, "float32"), (2, "mixed_bfloat16")):
        for size in (1, 2, 4, 8, 16):
            need = step_memory_gb(params, acts, size, bytes_act)
            fits[f"{precision}_batch{size}_gb"] = need
    payload = {"profile": profile.name, "input_shape_zyxc": list(shape), "batch_size": batch,
               "depth": profile.depth, "base_filters": profile.base_filters,
               "parameters": params, "activation_elements_per_sample": acts,
               "activation_mb_per_sample_float32": acts * 4 / 1e6,
               "activation_mb_per_sample_bfloat16": acts * 2 / 1e6,
               "first_step_s": times[0], "step_s": step, "step_times_s": times,
               "train_gflop_per_s": 3 * count_flops(model) * batch / step / 1e9,
               "loss": float(logs["loss"]), "peak_rss_gib": rss,
               "estimated_step_memory_gb": fits, "cards_gb": list(CARDS_GB),
               "forward_gflop_per_sample": count_flops(model) / 1e9}
    path = write_result(f"dryrun_{profile.name}", payload)
    print(f"{profile.name}: input {shape}, batch {batch}, depth {profile.depth}, "
          f"{profile.base_filters} filters; {params:,} parameters; "
          f"{payload['forward_gflop_per_sample']:.1f} GFLOP forward per sample")
    print(f"activations kept for backprop: {payload['activation_mb_per_sample_float32']:.0f} MB "
          f"per sample in float32 ({payload['activation_mb_per_sample_bfloat16']:.0f} MB in "
          "bfloat16)")
    print(f"CPU: first step {times[0]:.1f} s (tracing included), then {step:.1f} s per step "
          f"(median of 3; {payload['train_gflop_per_s']:.0f} GFLOP/s at 3 x forward FLOPs); "
          f"loss {payload['loss']:.3f}; peak RSS {rss:.1f} GiB")
    for precision in ("float32", "mixed_bfloat16"):
        cells = []
        for size in (1, 2, 4, 8, 16):
            need = fits[f"{precision}_batch{size}_gb"]
            fit = "/".join("y" if need < 0.9 * card else "n" for card in CARDS_GB)
            cells.append(f"batch {size}: {need:.1f} GB ({fit})")
        print(f"{precision:>15}: " + "; ".join(cells) + "  [fits 16/24/80 GB]")
    print(f"wrote {path.name}")


if __name__ == "__main__":
    main()
