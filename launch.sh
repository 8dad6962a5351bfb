#!/usr/bin/env bash
# Train with `accelerate launch`.
#
#   ./launch.sh                                  generate the embedded pushing world into shards/ (if absent)
#                                                and train the demo recipe
#   ./launch.sh RECIPE [ACCEL_CONFIG] [--section.key=value ...]
#
# ACCEL_CONFIG defaults to recipes/accelerate/cpu.yaml without a GPU, gpu1_bf16.yaml with one GPU and
# node8_bf16.yaml with eight. Multi-node: set NNODES, GPUS_PER_NODE, MACHINE_RANK, MASTER_ADDR and MASTER_PORT
# on every node (see recipes/accelerate/multinode_bf16.yaml). Extra arguments override recipe keys, e.g.
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

if [ -z "$accel" ]; then
    gpus=$(python -c "import torch; print(torch.cuda.device_count())")
    if [ "$gpus" -ge 8 ]; then accel=recipes/accelerate/node8_bf16.yaml
    elif [ "$gpus" -ge 1 ]; then accel=recipes/accelerate/gpu1_bf16.yaml
    else accel=recipes/accelerate/cpu.yaml
    fi
fi
[ -f "$accel" ] || { echo "error: accelerate config not found: $accel" >&2; exit 2; }

# The embedded datasets are generated on first use: BAIR-layout folders, then WebDataset shards.
ensure_embedded() {  # name world train validate test
    local shards="shards/$1" folders="shards/$1-folders"
    [ -f "$shards/manifest.json" ] && return
    echo "generating the embedded '$2' dataset into $shards ..."
    [ -d "$folders" ] || cvae synth --world "$2" --out "$folders" --train "$3" --validate "$4" --test "$5"
    cvae shards convert "$folders" "$shards" --maxcount 64
}
grep -Eq '^\s*shards:\s*shards/pushing\s*$' "$recipe" && ensure_embedded pushing pushing 1000 100 100
grep -Eq '^\s*shards:\s*shards/digits\s*$' "$recipe" && ensure_embedded digits shapes 1000 100 100

args=(--config_file "$accel")
if [ "${NNODES:-1}" -gt 1 ]; then
    args+=(--num_machines "$NNODES" --num_processes "$((NNODES * ${GPUS_PER_NODE:-8}))"
           --machine_rank "${MACHINE_RANK:?set MACHINE_RANK}" --main_process_ip "${MASTER_ADDR:?set MASTER_ADDR}"
           --main_process_port "${MASTER_PORT:-29500}")
fi
# A free port for single-node runs, so two trainings on one machine do not collide.
[ "${NNODES:-1}" -gt 1 ] || args+=(--main_process_port "${MASTER_PORT:-$(python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}")

exec accelerate launch "${args[@]}" -m toolkit train "$recipe" "$@"
