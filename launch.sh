#!/usr/bin/env bash
# Train with `accelerate launch`.
#
#   ./launch.sh                                  generate the embedded pushing world into shards/ (if absent)
#                                                and train the demo recipe
#   ./launch.sh RECIPE [ACCEL_CONFIG] [--section.key=value ...]
#
# ACCEL_CONFIG defaults to recipes/accelerate/cpu.yaml without a GPU and to one process per visible GPU (bf16,
# or fp16 where a GPU has no bf16) with GPUs. Multi-node: set NNODES, GPUS_PER_NODE, MACHINE_RANK, MASTER_ADDR
# and MASTER_PORT on every node (see recipes/accelerate/multinode_bf16.yaml). Extra arguments override recipe
# keys, e.g.
#   ./launch.sh recipes/train/bair_lab.yaml recipes/accelerate/node8_bf16.yaml --train.epochs=100
set -euo pipefail
cd "$(dirname "$0")"

recipe="${1:-recipes/train/demo.yaml}"
[ $# -gt 0 ] && shift
accel=""
if [ $# -gt 0 ] && [[ "$1" != --* ]]; then
    accel="$1"
    shift
fi
[ -f "$recipe" ] || { echo "error: recipe not found: $recipe" >&2; exit 2; }
# The accelerate arguments for this machine (toolkit/launcher.py: every visible GPU, bf16 or fp16, a free port
# on one node; NNODES/GPUS_PER_NODE/MACHINE_RANK/MASTER_ADDR/MASTER_PORT on several).
launch_args=$(python -m toolkit.launcher ${accel:+"$accel"}) || exit 2
mapfile -t args <<<"$launch_args"

# The embedded datasets are generated on first use: BAIR-layout folders, then WebDataset shards, with a process
# per core (at most 8; any number writes the same files).
ensure_embedded() {  # name world train validate test
    local shards="shards/$1" folders="shards/$1-folders" workers
    [ -f "$shards/manifest.json" ] && return
    echo "generating the embedded '$2' dataset into $shards ..."
    workers=$(python -c 'from toolkit.launcher import data_workers; print(data_workers())')
    [ -d "$folders" ] || cvae synth --world "$2" --out "$folders" --train "$3" --validate "$4" --test "$5" --workers "$workers"
    cvae shards convert "$folders" "$shards" --maxcount 64 --workers "$workers"
}
grep -Eq '^\s*shards:\s*shards/pushing\s*$' "$recipe" && ensure_embedded pushing pushing 1000 100 100
grep -Eq '^\s*shards:\s*shards/digits\s*$' "$recipe" && ensure_embedded digits shapes 1000 100 100

# On SIGTERM/SIGINT torchrun's agent gives the trainers this long to finish the step and save a checkpoint
# before it kills them (torch's default is 30 s, short for a large checkpoint on a slow disk).
export TORCH_ELASTIC_SHUTDOWN_TIMEOUT="${TORCH_ELASTIC_SHUTDOWN_TIMEOUT:-300}"
exec accelerate launch "${args[@]}" -m toolkit train "$recipe" "$@"
