#!/usr/bin/env bash
# One GPU, under 8 minutes, a short report at the end ($OUT/report.txt):
#   1. throughput of the lab model (22M parameters) in bf16 at batch 12, 48 and 96 per GPU, eager and with
#      whole-step CUDA graphs, teacher forcing on and off: ms/step, sequences/s, MFU; a profile of the batch-12
#      step (CUDA kernel time against wall time); then train.compile at batch 12 (alone on the GPU, ~4.5 min);
#   2. TRAIN_SECONDS (150) of the lab-shaped model (recipes/train/bair_lab.yaml) in bf16 with CUDA graphs on the
#      embedded pushing world, stopped with SIGTERM (the trainer saves a checkpoint), validated every epoch,
#      then `cvae eval` of the stopped checkpoint on the validation split against copy-last-frame; meanwhile
#   3. the tests that need CUDA (tests/test_cuda.py: bf16, fp16 with the gradient scaler, 1-GPU DDP, eval on
#      CUDA vs CPU, graphed vs eager steps, a resumed graphed run, compile with channels_last) and the
#      non-finite guard;
#   4. the speed of the `svg` evaluation protocol (100 samples x 28 frames), if benchmarks/eval_speed.py exists.
#
#   bash benchmarks/gpu_check.sh            # logs and report in $OUT (default runs/gpu_check)
#   TRAIN_SECONDS=100 SKIP_TESTS=1 SKIP_COMPILE=1 bash benchmarks/gpu_check.sh     # a shorter check
#
# Needs torch with CUDA and the project's dependencies importable (pip install -e .); W&B is switched off.
# Uses shards/pushing if present, else generates it (about a minute).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu_check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # toolkit uninstalled too
seconds=${TRAIN_SECONDS:-150}
report="$OUT/report.txt"
: >"$report"
say() { echo "$*" | tee -a "$report"; }

say "# gpu_check $(date -u +%FT%TZ): $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader)"
say "# $(python -c 'import torch, accelerate; print("torch", torch.__version__, "accelerate", accelerate.__version__)')"
if [ ! -f shards/pushing/manifest.json ]; then
    python -m toolkit synth --out /tmp/pushing-folders --train 1000 --validate 100 --test 100 --quiet &&
        python -m toolkit shards convert /tmp/pushing-folders shards/pushing --maxcount 64 --quiet
fi

# 1. throughput, alone on the GPU: eager and graphs first, then compiled (its compilation takes minutes)
timeout 170 python benchmarks/gpu_throughput.py --batches 12,48,96 --modes eager,graphs --profile \
    >"$OUT/throughput.log" 2>&1
say "## 1a. throughput, eager and CUDA graphs (exit $?)"
grep -vE "^\s*$|Warning|warn" "$OUT/throughput.log" | tail -n 30 | tee -a "$report"
if [ -z "${SKIP_COMPILE:-}" ]; then
    timeout 150 python benchmarks/gpu_throughput.py --batches 12 --modes compile --rounds 2 \
        >"$OUT/throughput_compiled.log" 2>&1
    say "## 1b. throughput, train.compile (exit $?)"
    grep -E "^ +12 |failed" "$OUT/throughput_compiled.log" | tee -a "$report"
fi

# 2. training in the background ...
run=/tmp/gpu_check_lab
rm -rf "$run"
timeout -s TERM "$seconds" python -m toolkit train recipes/train/bair_lab.yaml --data.shards=shards/pushing \
    --train.run_dir="$run" --train.epochs=1000 --train.epoch_size=300 --train.eval_every=1 --train.progress=false \
    --train.mixed_precision=bf16 --train.cuda_graphs=true --wandb.mode=disabled >"$OUT/train.log" 2>&1 &
train_pid=$!

# 3. ... while the CUDA tests run
if [ -z "${SKIP_TESTS:-}" ]; then
    timeout 200 python -m pytest -q -p no:cacheprovider -rA tests/test_cuda.py \
        "tests/test_train.py::test_nonfinite_losses_are_skipped_then_abort_keeps_the_last_checkpoint" \
        >"$OUT/tests.log" 2>&1
    say "## 3. CUDA tests (exit $?)"
    grep -E "^(PASSED|FAILED|ERROR|SKIPPED)|passed|failed|largest" "$OUT/tests.log" | tail -n 16 | tee -a "$report"
fi

wait "$train_pid"
say "## 2. training with CUDA graphs (exit $?; 124 = stopped by the signal after $seconds s, which the trainer saw through)"
grep -E "parameters|captured|cuda_graphs|stopped by a signal" "$OUT/train.log" | tee -a "$report"
cp "$run/metrics.jsonl" "$OUT/train_metrics.jsonl" 2>/dev/null
python - "$run" <<'EOF' | tee -a "$report"
import json, sys
records = [json.loads(line) for line in open(f"{sys.argv[1]}/metrics.jsonl")]
perf = [r for r in records if r["kind"] == "perf"]
for r in (r for r in records if r["kind"] == "val"):
    print(f"epoch {r['epoch'] + 1:3d} step {r['step']:6d}: val PSNR {r['psnr']:.2f} dB (copy-last {r['baseline_psnr']:.2f}),"
          f" SSIM {r['ssim']:.3f} (copy-last {r['baseline_ssim']:.3f})")
if perf:
    print(f"training throughput: {sorted(p['seq_per_s'] for p in perf)[len(perf) // 2]:.0f} seq/s (median epoch)")
EOF
newest=$(ls -d "$run"/checkpoints/epoch_* 2>/dev/null | sort | tail -n 1)
if [ -n "$newest" ]; then
    python -m toolkit eval "$newest" --shards shards/pushing --split validate --json "$OUT/eval.json" \
        >"$OUT/eval.log" 2>&1
    say "## cvae eval of $(basename "$newest") on validate (exit $?)"
    tail -n 3 "$OUT/eval.log" | tee -a "$report"
    # 4. the svg protocol's speed on this GPU
    if [ -f benchmarks/eval_speed.py ]; then
        timeout 90 python benchmarks/eval_speed.py "$newest" --shards shards/pushing --protocol svg --videos 32 \
            >"$OUT/eval_speed.log" 2>&1
        say "## 4. svg protocol speed (exit $?)"
        tail -n 4 "$OUT/eval_speed.log" | tee -a "$report"
    fi
fi
