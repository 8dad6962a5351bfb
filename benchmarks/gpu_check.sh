#!/usr/bin/env bash
# The GPU check, in one run of about 8 minutes (GPU_CHECK_BUDGET=470 s caps every part's timeout, so no part
# can eat the rest), in the order of information per second:
#   0. the carried wheels installed (.whl/: webdataset, braceexpand, google-crc32c; bash benchmarks/gpu_wheels.sh
#      downloads them), every import the check needs (it stops there with a report line if one fails), the
#      versions of torch, CUDA, cuDNN and NCCL; the pushing-world shards generated in the background;
#   1. the graphed-vs-eager and LSTM-dtype tests, each with its own timeout;
#   2. throughput of the lab model in bf16, eager and CUDA graphs, at batch 12, 48 and 96: a profile of batch 12
#      first, then ms/step, sequences/s, MFU and peak memory (benchmarks/gpu_throughput.py);
#   3. TRAIN_SECONDS (90) of the lab-shaped model in bf16 with CUDA graphs on the pushing world, alone on the
#      GPU, stopped by SIGTERM (the trainer saves a checkpoint); then `cvae eval` of that checkpoint on the
#      validation split, and the svg protocol's speed if benchmarks/eval_speed.py exists;
#   4. the remaining CUDA tests (tests/test_cuda.py) and the non-finite guard;
#   5. train.compile (the compile test, then its throughput), only if 100 s or more of the budget remain.
# Results, at most 8 files in $OUT (default runs/gpu_check): report.txt, eval.json, train_metrics.jsonl and
# logs.tgz (every part's log). Work files go to GPU_CHECK_WORK (default /tmp/gpu_check).
#
#   bash benchmarks/gpu_check.sh                  # on the GPU machine; W&B is off, wandb need not be installed
#   GPU_CHECK_DRY_RUN=1 bash benchmarks/gpu_check.sh    # on a CPU: every part with tiny settings (the plumbing;
#                                                        # the CUDA tests skip), as tests/test_gpu_check.py does
# Also: GPU_CHECK_PYTHON (python3), GPU_CHECK_WHEELS (.whl), GPU_CHECK_IMPORTS (more modules to require),
# GPU_CHECK_LIMIT_<part> (that part's timeout in seconds), GPU_CHECK_COMPILE_MIN (100).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu_check}
WORK=${GPU_CHECK_WORK:-/tmp/gpu_check}
PY=${GPU_CHECK_PYTHON:-python3}
WHEELS=${GPU_CHECK_WHEELS:-.whl}
DRY=${GPU_CHECK_DRY_RUN:-}
BUDGET=${GPU_CHECK_BUDGET:-470}
COMPILE_MIN=${GPU_CHECK_COMPILE_MIN:-100}
seconds=${TRAIN_SECONDS:-90}
RESERVE=10   # seconds kept for the report and the tarball at the end
KILL=10      # seconds between a part's SIGTERM and its SIGKILL
deadline=$((SECONDS + BUDGET))
logs="$WORK/logs" report="$OUT/report.txt"
mkdir -p "$OUT" "$WORK" && rm -rf "$logs" "$WORK/run" && mkdir -p "$logs" || exit 2
rm -f "$OUT/report.txt" "$OUT/eval.json" "$OUT/train_metrics.jsonl" "$OUT/logs.tgz"
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # toolkit uninstalled
say() { echo "$*" | tee -a "$report"; }
left() { echo $((deadline - SECONDS)); }

data_pid=
finish() {  # on every exit: the data job stopped, the logs packed (atomically) beside the report
    [ -n "$data_pid" ] && kill "$data_pid" 2>/dev/null
    cp "$report" "$logs/" 2>/dev/null
    tar -czf "$WORK/logs.tgz" -C "$logs" . && mv "$WORK/logs.tgz" "$OUT/logs.tgz"
    echo "# results in $OUT: $(ls "$OUT" | tr '\n' ' ')"
}
trap finish EXIT
trap 'say "## stopped by a signal after $SECONDS s"; exit 143' TERM INT

# part NAME WANT CMD...: CMD with its output in $logs/NAME.log, under a timeout of WANT seconds
# (GPU_CHECK_LIMIT_NAME overrides it), capped by what the budget leaves; says how it ended. Returns CMD's status.
part() {
    local name=$1 want=$2
    shift 2
    local var="GPU_CHECK_LIMIT_$name"
    want=${!var:-$want}
    local room=$(($(left) - RESERVE - KILL))
    if [ "$room" -lt 3 ]; then
        say "## $name: skipped, $(left) s of the budget left"
        return 125
    fi
    local limit=$((want < room ? want : room)) start=$SECONDS
    timeout -k "$KILL" "$limit" "$@" >"$logs/$name.log" 2>&1
    local rc=$?
    case $rc in
        0) say "## $name: ok after $((SECONDS - start)) s (limit $limit s)";;
        124|137) say "## $name: killed by its timeout after $((SECONDS - start)) s (limit $limit s)";;
        *) say "## $name: exit $rc after $((SECONDS - start)) s (limit $limit s)";;
    esac
    return $rc
}
# the tests' outcomes (-v lines, failures with their message, the count) and the figures they print
tests_summary() {
    grep -aE "^tests/.*(PASSED|FAILED|ERROR|SKIPPED)|^(FAILED|ERROR) |[0-9] (passed|failed|skipped|error)|largest|\
smallest|capture mode|learning rate as|NCCL|cuDNN LSTM|graphed DDP" "$logs/$1.log" | cut -c1-220 | tail -n "$2" |
        tee -a "$report"
}

# 0. wheels, imports, versions; the data in the background
say "# gpu_check $(date -u +%FT%TZ)${DRY:+ (dry run on a CPU: tiny settings, the CUDA tests skip)}, budget $BUDGET s"
if compgen -G "$WHEELS/*.whl" >/dev/null; then
    if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WORK/site" \
            "$WHEELS"/*.whl >"$logs/wheels.log" 2>&1; then
        export PYTHONPATH="$WORK/site:$PYTHONPATH"
        say "# wheels installed from $WHEELS: $(cd "$WHEELS" && ls -- *.whl | tr '\n' ' ')"
    else
        say "## stop: the wheels in $WHEELS did not install: $(tail -n 1 "$logs/wheels.log")"
        exit 3
    fi
else
    say "# no wheels in $WHEELS (bash benchmarks/gpu_wheels.sh downloads them)"
fi
imports="torch accelerate numpy yaml PIL matplotlib tqdm safetensors torchvision pytest webdataset braceexpand
google_crc32c toolkit.cli toolkit.train.loop toolkit.data.loader toolkit.data.shards.convert toolkit.eval.report
${GPU_CHECK_IMPORTS:-}"
if ! "$PY" - $imports >"$logs/imports.log" 2>&1 <<'EOF'; then
import importlib, sys
missing = []
for name in sys.argv[1:]:
    try:
        importlib.import_module(name)
    except Exception as e:
        missing.append(f"{name} ({type(e).__name__}: {e})")
if missing:
    sys.exit("cannot import " + "; ".join(missing))
EOF
    say "## stop: $(tail -n 1 "$logs/imports.log") (carry its wheel in $WHEELS: benchmarks/gpu_wheels.sh)"
    exit 3
fi
say "# $("$PY" - 2>&1 <<'EOF'
import platform, accelerate, torch
cuda = torch.cuda.is_available()
nccl = torch.cuda.nccl.version() if cuda else None
print(f"python {platform.python_version()}, torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN "
      f"{torch.backends.cudnn.version()}, NCCL {'.'.join(map(str, nccl)) if isinstance(nccl, tuple) else nccl}, "
      f"accelerate {accelerate.__version__}; "
      + (f"{torch.cuda.get_device_name()}, {torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB"
         if cuda else "no CUDA device"))
EOF
)"
command -v nvidia-smi >/dev/null &&
    say "# $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | head -n 1)"

data=shards/pushing
if [ ! -f "$data/manifest.json" ]; then
    data="$WORK/pushing"
    sizes="--train 1000 --validate 100 --test 100" workers=4
    [ -n "$DRY" ] && sizes="--train 8 --validate 4 --test 4" workers=1
    if [ ! -f "$data/manifest.json" ]; then  # made by an earlier run on this machine: kept
        rm -rf "$WORK/pushing-folders" "$data"
        OMP_NUM_THREADS=2 timeout -k "$KILL" 240 bash -c "'$PY' -m toolkit synth --out '$WORK/pushing-folders' \
            $sizes --quiet && '$PY' -m toolkit shards convert '$WORK/pushing-folders' '$data' --maxcount 64 \
            --workers $workers --quiet" >"$logs/data.log" 2>&1 &
        data_pid=$!
    fi
fi

# 1. the tests that say most per second, one process each
for t in test_graphed_steps_train_as_eager_steps test_the_lstm_dtype_under_bf16_autocast_on_the_gpu; do
    part "$t" 90 "$PY" -m pytest -v -rA -p no:cacheprovider "tests/test_cuda.py::$t"
    tests_summary "$t" 6
done

# 2. throughput, alone on the GPU but for the data job's CPU work
if [ -n "$DRY" ]; then
    part throughput 130 "$PY" benchmarks/gpu_throughput.py --device cpu --model tiny --batches 2 \
        --modes eager,graphs --rounds 1 --steps 1 --warmup 1 --profile
else
    part throughput 130 "$PY" benchmarks/gpu_throughput.py --batches 12,48,96 --modes eager,graphs --rounds 2 \
        --steps 10 --warmup 15 --profile
fi
grep -aE "^#|^ +[0-9]+ |profile:|^  +[0-9.]+ ms" "$logs/throughput.log" | cut -c1-160 | tail -n 30 | tee -a "$report"

# 3. training alone on the GPU, then its evaluation
if [ -n "$data_pid" ]; then
    wait "$data_pid"
    rc=$? data_pid=
    say "## data: $data $([ "$rc" = 0 ] && echo made || echo "FAILED (exit $rc): $(tail -n 1 "$logs/data.log")")"
fi
run="$WORK/run"
tiny=()
[ -n "$DRY" ] && tiny=(--model.width=0.125 --model.g_dim=16 --model.z_dim=4 --model.rnn_size=32
    --data.batch_size=2 --data.num_workers=0 --train.epochs=2 --train.epoch_size=2 --train.bn_batches=2)
KILL=30 part train "$((seconds + 20))" "$PY" -m toolkit train recipes/train/bair_lab.yaml --data.shards="$data" \
    --train.run_dir="$run" --train.epochs=1000 --train.epoch_size=300 --train.eval_every=2 --train.progress=false \
    --train.log_every=50 --train.mixed_precision=bf16 --train.cuda_graphs=true --wandb.mode=disabled "${tiny[@]}"
say "   (training runs $seconds s plus its start-up; a kill by its timeout is the SIGTERM it saves a checkpoint on)"
grep -aE "parameters|captured|cuda_graphs|stopped by a signal|Error|error:" "$logs/train.log" | cut -c1-220 |
    tail -n 8 | tee -a "$report"
cp "$run/metrics.jsonl" "$OUT/train_metrics.jsonl" 2>/dev/null
"$PY" - "$run" <<'EOF' 2>&1 | tail -n 12 | tee -a "$report"
import json, sys
records = [json.loads(line) for line in open(f"{sys.argv[1]}/metrics.jsonl")]
perf = [r for r in records if r["kind"] == "perf"]
for r in (r for r in records if r["kind"] == "val"):
    print(f"epoch {r['epoch'] + 1:3d} step {r['step']:6d}: val PSNR {r['psnr']:.2f} dB (copy-last {r['baseline_psnr']:.2f}),"
          f" SSIM {r['ssim']:.3f} (copy-last {r['baseline_ssim']:.3f})")
if perf:
    print(f"training throughput: {sorted(p['seq_per_s'] for p in perf)[len(perf) // 2]:.0f} seq/s (median epoch)")
print(f"non-finite steps: {max([r.get('nonfinite', 0) for r in records if r['kind'] == 'epoch'] or [0])}")
EOF
newest=$(ls -d "$run"/checkpoints/epoch_* 2>/dev/null | sort | tail -n 1)
if [ -n "$newest" ]; then
    part eval 60 "$PY" -m toolkit eval "$newest" --shards "$data" --split validate --json "$OUT/eval.json"
    tail -n 3 "$logs/eval.log" | cut -c1-220 | tee -a "$report"
    if [ -f benchmarks/eval_speed.py ]; then  # the svg protocol's speed on this GPU
        videos=32; [ -n "$DRY" ] && videos=2  # 100 samples x 28 frames each
        part eval_speed 60 "$PY" benchmarks/eval_speed.py "$newest" --shards "$data" --protocol svg --videos "$videos"
        tail -n 4 "$logs/eval_speed.log" | tee -a "$report"
    fi
else
    say "## eval: skipped, the training left no checkpoint"
fi

# 4. the remaining CUDA tests, shortest and most telling first (-v: a killed run still lists the finished ones)
part cuda_tests 400 "$PY" -m pytest -v -rA -p no:cacheprovider \
    tests/test_cuda.py::test_a_capture_beside_a_pinning_thread_succeeds \
    tests/test_cuda.py::test_a_resumed_graph_reads_the_learning_rate_it_is_given \
    tests/test_cuda.py::test_graphed_ddp_steps_train_as_eager_ddp_steps \
    tests/test_train.py::test_nonfinite_losses_are_skipped_then_abort_keeps_the_last_checkpoint \
    tests/test_cuda.py::test_eval_on_the_gpu_agrees_with_the_cpu \
    tests/test_cuda.py::test_mixed_precision_training_on_the_gpu \
    tests/test_cuda.py::test_one_process_launch_through_accelerate_on_the_gpu \
    tests/test_cuda.py::test_a_resumed_graphed_run_logs_what_an_uninterrupted_one_does
tests_summary cuda_tests 24

# 5. compile, last: minutes of compilation, only with enough of the budget left
if [ "$(left)" -lt "$COMPILE_MIN" ]; then
    say "## compile: skipped, $(left) s of the budget left (needs $COMPILE_MIN)"
else
    part compile_test 600 "$PY" -m pytest -v -rA -p no:cacheprovider \
        tests/test_cuda.py::test_compile_with_channels_last_trains
    tests_summary compile_test 6
    if [ -n "$DRY" ]; then
        say "## compile throughput: skipped in a dry run (minutes of compilation on a CPU)"
    elif [ "$(left)" -ge "$COMPILE_MIN" ]; then
        part compile_throughput 600 "$PY" benchmarks/gpu_throughput.py --batches 12 --modes compile --rounds 2
        grep -aE "^ +12 " "$logs/compile_throughput.log" | tee -a "$report"
    fi
fi
say "# done after $SECONDS s of the $BUDGET s budget"
