#!/usr/bin/env bash
# The paper profile's training step on a GPU machine that has JAX but no TensorFlow and no
# network: installs Keras from a folder of wheels, then times bench_train_gpu.py under JAX
# with bfloat16 for a fixed number of steps (a few minutes on one GPU).
#
#   Fill the folder on a machine with a network (same Python version and platform):
#     pip download -d wheels keras==3.15.1 pandas==3.1.1
#   Then, on the GPU machine, from the repository root:
#     bash benchmarks/gpu_bench.sh wheels [steps]
#
# Writes bench_train_gpu_paper_jax.json (samples/s, peak memory, the GPU's name) to $OUT
# when set, else to benchmarks/results/.
set -euo pipefail
wheels=${1:?usage: gpu_bench.sh WHEELS_DIR [STEPS]}
steps=${2:-20}
python -c 'import jax; assert any(d.platform == "gpu" for d in jax.devices()), "no GPU for JAX"'
python -m pip install --quiet --no-index --find-links "$wheels" keras pandas
KERAS_BACKEND=jax PYTHONPATH=. python benchmarks/bench_train_gpu.py --profile paper \
    --steps "$steps" --precision auto
