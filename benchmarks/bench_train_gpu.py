"""Training throughput of RP-Net on a GPU with mixed precision, under any Keras backend.

Usage::

    python benchmarks/bench_train_gpu.py --profile paper [--batch-size 4] [--steps 20]
    KERAS_BACKEND=jax python benchmarks/bench_train_gpu.py --profile paper

Random data of the profile's shapes (ROI x 2 channels, masks, labels) and the profile's
``full`` model (depth, base filters). Mixed precision (``mixed_bfloat16``) on a GPU, float32
otherwise; XLA via ``jit_compile="auto"``. Reports the device, compile (first-step) time,
samples/s after warm-up, the achieved TFLOP/s (3 x analytic forward FLOPs per sample) and
peak device memory. Writes ``$OUT/bench_train_gpu_<profile>_<backend>.json`` if ``$OUT`` is
set, else ``benchmarks/results/`` (``_cpu`` appended without a GPU). On a CPU it runs two
steps and says it is not a GPU measurement.

It imports only Keras, NumPy, ``utils.config`` and ``utils.model`` (no TensorFlow unless that
is the backend), so it runs under ``KERAS_BACKEND=jax`` without TensorFlow installed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import keras
import numpy as np

from utils import config
from utils.model.compile import compile_rpnet
from utils.model.flops import count_flops
from utils.model.rpnet import build_rpnet

TRAIN_FACTOR = 3  # one training step ~ 3 forward passes (forward, input and weight gradients)


def accelerators() -> list[str]:
    """GPU names visible to the current backend (empty on CPU)."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return [d.device_kind for d in jax.devices() if d.platform == "gpu"]
    if backend == "torch":
        import torch

        return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    if backend == "tensorflow":
        import tensorflow as tf

        return [tf.config.experimental.get_device_details(g).get("device_name", g.name)
                for g in tf.config.list_physical_devices("GPU")]
    return []


def peak_memory_gib() -> float | None:
    """Peak device memory of this process, where the backend reports it."""
    backend = keras.backend.backend()
    try:
        if backend == "jax":
            import jax

            stats = jax.devices()[0].memory_stats() or {}
            return stats.get("peak_bytes_in_use", 0) / 2**30 or None
        if backend == "torch":
            import torch

            return torch.cuda.max_memory_allocated() / 2**30
        if backend == "tensorflow":
            import tensorflow as tf

            return tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**30
    except Exception:
        return None
    return None


def random_data(shape: tuple[int, ...], n: int, seed: int = 0) -> tuple[dict, dict]:
    rng = np.random.default_rng(seed)
    x = {tp: rng.normal(size=(n, *shape)).astype(np.float32) for tp in ("pre", "post")}
    y = {k: (rng.random((n, *shape[:3], 1)) > 0.9).astype(np.float32)
         for k in ("mask_pre", "mask_post")}
    y["pcr"] = (np.arange(n) % 2).astype(np.float32)[:, None]
    return x, y


def measure(profile: config.Profile, batch_size: int, steps: int, warmup: int,
            policy: str) -> dict:
    keras.mixed_precision.set_global_policy(policy)
    shape = (*profile.roi_zyx, len(config.SEQUENCES))
    model = build_rpnet(shape, "full", depth=profile.depth,
                        base_filters=profile.base_filters, seed=profile.seed)
    compile_rpnet(model, "full", profile.learning_rate, jit_compile="auto")
    x, y = random_data(shape, batch_size * max(steps, warmup))
    warm = {k: v[:batch_size * warmup] for k, v in x.items()}
    warm_y = {k: v[:batch_size * warmup] for k, v in y.items()}
    start = time.perf_counter()
    model.fit(warm, warm_y, batch_size=batch_size, epochs=1, verbose=0, shuffle=False)
    first = time.perf_counter() - start
    start = time.perf_counter()
    model.fit(x, y, batch_size=batch_size, epochs=1, verbose=0, shuffle=False)
    seconds = time.perf_counter() - start
    samples = batch_size * max(steps, warmup)
    flops = count_flops(model)
    rate = samples / seconds
    return {"batch_size": batch_size, "steps": samples // batch_size,
            "warmup_s": first, "step_ms": 1000 * seconds / (samples // batch_size),
            "samples_per_s": rate, "forward_gflop_per_sample": flops / 1e9,
            "achieved_tflops": TRAIN_FACTOR * flops * rate / 1e12,
            "peak_memory_gib": peak_memory_gib(), "policy": policy,
            "jit_compile": str(getattr(model, "jit_compile", "auto"))}


def output_path(profile: str, backend: str, gpu: bool) -> Path:
    base = Path(os.environ["OUT"]) if os.environ.get("OUT") else (
        Path(__file__).resolve().parent / "results")
    return base / f"bench_train_gpu_{profile}_{backend}{'' if gpu else '_cpu'}.json"


def write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", default="paper")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the profile's")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--precision", default="auto", choices=["auto", "float32",
                                                                 "mixed_bfloat16"])
    args = parser.parse_args(argv)
    profile = config.get_profile(args.profile)
    gpus = accelerators()
    backend = keras.backend.backend()
    steps, warmup = (args.steps, args.warmup) if gpus else (2, 1)
    policy = args.precision if args.precision != "auto" else (
        "mixed_bfloat16" if gpus else "float32")
    device = gpus[0] if gpus else f"CPU ({platform.processor() or platform.machine()})"
    print(f"backend {backend}, device {device}, policy {policy}")
    if not gpus:
        print("no GPU: running 2 steps on the CPU; this is NOT a GPU measurement")
    result = measure(profile, args.batch_size or profile.batch_size, steps, warmup, policy)
    payload = {"profile": profile.name, "backend": backend, "keras": keras.__version__,
               "device": device, "n_gpus": len(gpus), "gpu_measurement": bool(gpus),
               "roi_zyx": list(profile.roi_zyx), "depth": profile.depth,
               "base_filters": profile.base_filters, **result}
    target = output_path(profile.name, backend, bool(gpus))
    write_json(target, payload)
    print(f"{result['samples_per_s']:.2f} samples/s (batch {result['batch_size']}, "
          f"{result['step_ms']:.0f} ms/step, {result['achieved_tflops']:.3g} TFLOP/s, "
          f"first step {result['warmup_s']:.1f} s, peak memory {result['peak_memory_gib']})")
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
