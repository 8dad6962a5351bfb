#!/usr/bin/env bash
# One GPU, under 8 minutes, a short report at the end:
#   1. throughput of the lab model (22M parameters) in bf16, batch 12 per GPU, compile off and on: sequences/s,
#      ms/step and MFU from the counted FLOPs per step (alone on the GPU: about 2.5 minutes);
#   2. 5 minutes of the lab-shaped model (recipes/train/bair_lab.yaml) on the embedded pushing world, stopped with
#      SIGTERM (the trainer saves a checkpoint), validated every epoch, then `cvae eval` of the stopped checkpoint
#      on the validation split against copy-last-frame; meanwhile
#   3. the tests that need CUDA (tests/test_cuda.py: bf16, fp16 with the gradient scaler, 1-GPU DDP through
#      accelerate, eval on CUDA vs CPU) and the non-finite guard (fused Adam skipping on the device).
#
#   bash benchmarks/gpu_check.sh            # logs and report in $OUT (default runs/gpu_check)
#   TRAIN_SECONDS=200 SKIP_TESTS=1 bash benchmarks/gpu_check.sh     # a shorter check
#
# Needs torch with CUDA, accelerate, webdataset, pytest; W&B is switched off. Uses shards/pushing if present,
# else generates it (about a minute).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu_check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # toolkit uninstalled too
seconds=${TRAIN_SECONDS:-300}
report="$OUT/report.txt"
: >"$report"
say() { echo "$*" | tee -a "$report"; }

say "# gpu_check $(date -u +%FT%TZ): $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader)"
say "# $(python -c 'import torch, accelerate; print("torch", torch.__version__, "accelerate", accelerate.__version__)')"
if [ ! -f shards/pushing/manifest.json ]; then
    python -m toolkit synth --out /tmp/pushing-folders --train 1000 --validate 100 --test 100 --quiet &&
        python -m toolkit shards convert /tmp/pushing-folders shards/pushing --maxcount 64 --quiet
fi

# 1. throughput, alone on the GPU: eager first, then compiled (its compilation may take minutes)
timeout 80 python benchmarks/throughput.py --device cuda --models full --compile off --rounds 3 --steps 20 \
    >"$OUT/throughput.log" 2>&1
say "## 1a. throughput, eager (exit $?)"
grep -E "^##|^variant|^toolkit" "$OUT/throughput.log" | tee -a "$report"
timeout 150 python benchmarks/throughput.py --device cuda --models full --compile only --rounds 3 --steps 20 \
    >"$OUT/throughput_compiled.log" 2>&1
say "## 1b. throughput, compiled (exit $?)"
grep -E "^toolkit" "$OUT/throughput_compiled.log" | tee -a "$report"

# 2. five minutes of training in the background ...
run=/tmp/gpu_check_lab
rm -rf "$run"
timeout -s TERM "$seconds" python -m toolkit train recipes/train/bair_lab.yaml --data.shards=shards/pushing \
    --train.run_dir="$run" --train.epochs=1000 --train.epoch_size=300 --train.eval_every=1 --train.progress=false \
    --train.mixed_precision=bf16 --wandb.mode=disabled >"$OUT/train.log" 2>&1 &
train_pid=$!

# 3. ... while the CUDA tests run
if [ -z "${SKIP_TESTS:-}" ]; then
    timeout 280 python -m pytest -q -p no:cacheprovider tests/test_cuda.py \
        "tests/test_train.py::test_nonfinite_losses_are_skipped_then_abort_keeps_the_last_checkpoint" \
        >"$OUT/tests.log" 2>&1
    say "## 3. CUDA tests (exit $?)"
    tail -n 3 "$OUT/tests.log" | tee -a "$report"
fi

wait "$train_pid"
say "## 2. training (exit $?; 124 = stopped by the signal after $seconds s, which the trainer saw through)"
grep -E "parameters|stopped by a signal" "$OUT/train.log" | tee -a "$report"
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
fi
