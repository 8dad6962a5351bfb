#!/usr/bin/env bash
# Downloads, here, the wheels benchmarks/gpu_check.sh installs on the GPU machine, into .whl/ (git-ignored).
# That machine's image (python3 3.12, torch 2.11 with CUDA, accelerate, numpy, pyyaml, pillow, matplotlib, tqdm,
# safetensors, pytest) lacks webdataset with its braceexpand, and google-crc32c; wandb is not needed (the check
# runs with W&B off, and the toolkit imports wandb only when a run logs to it). Nothing can be fetched there,
# so the wheels travel with the working tree (about 120 KB).
#
#   bash benchmarks/gpu_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
    webdataset==1.0.2 braceexpand==0.1.7 google-crc32c==1.9.0
ls -l .whl
