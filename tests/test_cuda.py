"""On a CUDA GPU (skipped without one; `benchmarks/gpu_check.sh` runs them): bf16 and fp16 training, a one-process
accelerate launch, evaluation on the GPU agreeing with the CPU, whole-step CUDA graphs against eager steps (alone,
around DDP in an NCCL group, beside a pinning thread, after a restored checkpoint, across a resumed run with a
learning-rate schedule), the cuDNN LSTM under bf16 autocast, and torch.compile with channels_last."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from functools import partial

import numpy as np
import pytest
import torch

import graph_steps
from conftest import REPO, run_toolkit, tiny_recipe
from toolkit.train.checkpoint import read_checkpoint_meta
from toolkit.train.runlog import read_metrics

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_training_on_the_gpu(tmp_path, pushing_shards, precision):
    recipe = tiny_recipe(tmp_path / "r.yaml", pushing_shards, tmp_path / "run",
                         train={"epochs": 2, "epoch_size": 6, "eval_every": 1, "mixed_precision": precision})
    proc = run_toolkit("train", str(recipe))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "on cuda" in proc.stdout and f"mixed precision {precision}" in proc.stdout
    steps = read_metrics(tmp_path / "run", "step")
    assert len(steps) == 12 and all(np.isfinite([r["loss"], r["mse"], r["kld"]]).all() for r in steps)
    assert np.mean([r["mse"] for r in steps[-3:]]) < np.mean([r["mse"] for r in steps[:3]])  # it learns
    ckpt = tmp_path / "run" / "checkpoints" / "epoch_000002"
    _, meta = read_checkpoint_meta(ckpt)
    assert meta["mixed_precision"] == precision and ("scaler.pt" in meta["files"]) == (precision == "fp16")
    assert read_metrics(tmp_path / "run", "final")[-1]["nonfinite"] == 0


def test_one_process_launch_through_accelerate_on_the_gpu(tmp_path, pushing_shards):
    # the launcher path only: with one process accelerate makes no DistributedDataParallel model
    # (Accelerator.multi_device needs more than one); DDP itself: test_graphed_ddp_steps_train_as_eager_ddp_steps
    recipe = tiny_recipe(tmp_path / "r.yaml", pushing_shards, tmp_path / "run", train={"epochs": 1, "epoch_size": 4})
    cmd = [sys.executable, "-m", "accelerate.commands.accelerate_cli", "launch", "--config_file",
           str(REPO / "recipes" / "accelerate" / "node8_bf16.yaml"), "--num_processes", "1", "-m", "toolkit",
           "train", str(recipe)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "on cuda" in proc.stdout and "MULTI_GPU" in proc.stdout  # launched by torchrun, one rank
    assert read_metrics(tmp_path / "run", "final")[-1]["step"] == 4


def test_eval_on_the_gpu_agrees_with_the_cpu(tiny_run, pushing_shards, tmp_path):
    ckpt = tiny_run / "checkpoints" / "best"
    reports = {}
    for device, env in (("cuda", {}), ("cpu", {"CUDA_VISIBLE_DEVICES": ""})):
        proc = run_toolkit("eval", str(ckpt), "--shards", pushing_shards, "--split", "test", "--samples", "3",
                           "--json", str(tmp_path / f"{device}.json"), env={**os.environ, **env})
        assert proc.returncode == 0, proc.stderr[-3000:]
        reports[device] = json.loads((tmp_path / f"{device}.json").read_text())
    gap = np.abs(np.subtract(reports["cuda"]["per_sequence"]["psnr"], reports["cpu"]["per_sequence"]["psnr"]))
    print(f"largest per-sequence PSNR difference, GPU vs CPU: {gap.max():.2e} dB")
    assert gap.max() < 1e-3  # float32 on both (no TF32): rounding only
    assert f"{reports['cuda']['mean']['psnr']:.2f}" == f"{reports['cpu']['mean']['psnr']:.2f}"


BF16_LOSS_RTOL = graph_steps.LOSS_RTOL


@pytest.fixture
def bf16_accelerator():
    """What the trainer makes for graphs in bf16: autocast without its weight-cast cache. Accelerate's state is
    process-wide and refuses another precision or device once made, so it is reset before and after."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState
    from accelerate.utils import AutocastKwargs

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    yield Accelerator(mixed_precision="bf16", kwargs_handlers=[AutocastKwargs(cache_enabled=False)])
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


@pytest.mark.parametrize("decoder_cond", ["none", "step_and_skip"])  # step_and_skip gathers rows in the graph
def test_graphed_steps_train_as_eager_steps(bf16_accelerator, decoder_cond):
    from toolkit.train.graphs import GraphedStep
    from toolkit.train.step import Meter, make_optimizer, train_micro_batch

    acc = bf16_accelerator
    runs, initial = {}, [p.detach().double() for p in graph_steps.tiny_svg(decoder_cond).parameters()]
    for graphed in (False, True):
        model = graph_steps.tiny_svg(decoder_cond)
        model, optimizer = acc.prepare(model, make_optimizer(model, 0.0, (0.9, 0.999), 0.0, acc.device,
                                                             capturable=graphed))
        meter = Meter(acc.device, 1)
        step = (GraphedStep(acc, model, optimizer, meter, 1.0, graph_steps.NOISE_SHAPE) if graphed else
                partial(train_micro_batch, acc, model, optimizer, meter, grad_clip=1.0))
        runs[graphed] = graph_steps.run_steps(step, optimizer, meter, acc.device)
    assert len(step.graphs) == 2
    graph_steps.assert_graphed_trains_as_eager(runs[False], runs[True], initial)


def test_graphed_ddp_steps_train_as_eager_ddp_steps():
    path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])  # the carried wheels' folder too
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "ddp_graph_worker.py")], capture_output=True,
                          text=True, cwd=REPO, timeout=600, env={**os.environ, "PYTHONPATH": path})
    print(proc.stdout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "graphed DDP steps train as eager DDP steps" in proc.stdout


def test_a_capture_beside_a_pinning_thread_succeeds(bf16_accelerator):
    # what the loader's pin-memory thread does (data/loader.py with workers on a GPU), without pause: pin a
    # batch of a new size (cudaHostAlloc until every size is cached, cudaEventQuery on each reuse) and copy it
    # on its own stream; under capture_error_mode="global" such calls from another thread break a capture
    from toolkit.train.graphs import CAPTURE_ERROR_MODE, GraphedStep
    from toolkit.train.step import Meter, make_optimizer

    acc = bf16_accelerator
    model = graph_steps.tiny_svg()
    model, optimizer = acc.prepare(model, make_optimizer(model, 1e-3, (0.9, 0.999), 0.0, acc.device, True))
    meter = Meter(acc.device, 1)
    step = GraphedStep(acc, model, optimizer, meter, 1.0, graph_steps.NOISE_SHAPE)
    stop, errors, pinned, captures = threading.Event(), [], [], []

    def pin_and_copy() -> None:
        stream = torch.cuda.Stream(acc.device)
        try:
            while not stop.is_set():
                host = torch.empty(1 + len(pinned) % 24, 12, 3, 64, 64, dtype=torch.uint8).pin_memory()
                pinned.append(time.perf_counter())
                with torch.cuda.stream(stream):
                    host.to(acc.device, non_blocking=True)
                stream.synchronize()
                time.sleep(0.001)  # a loader's pace, and the GIL for the steps
        except Exception as e:  # reported by the assertion below
            errors.append(e)

    def timed_capture(teacher_forcing: bool, capture=step._capture) -> None:
        start = time.perf_counter()
        capture(teacher_forcing)
        captures.append((start, time.perf_counter()))

    step._capture = timed_capture
    thread = threading.Thread(target=pin_and_copy, daemon=True)
    thread.start()
    try:
        losses = []
        for i in range(graph_steps.CAPTURED + 2):
            step(*graph_steps.structured_batch(i, acc.device), i % 2 == 0, 1e-3)
            losses.append(float(meter.last[0]))
    finally:
        stop.set()
        thread.join(timeout=60)
    during = sum(any(a <= t <= b for a, b in captures) for t in pinned)
    print(f"capture mode {CAPTURE_ERROR_MODE}: {len(pinned)} batches pinned beside the steps, {during} of them "
          f"during the captures ({sum(b - a for a, b in captures) * 1e3:.0f} ms)")
    assert not errors, errors
    assert len(step.graphs) == 2 and np.isfinite(losses).all()
    assert during > 0, "no batch was pinned during a capture: nothing was tested"


def test_a_resumed_graph_reads_the_learning_rate_it_is_given(tmp_path, bf16_accelerator):
    # a resumed run's param groups come from optimizer.bin, loaded onto the CPU by accelerate; a graph that
    # captured a CPU learning rate would keep its capture-time value whatever the schedule says after
    from toolkit.train.graphs import GraphedStep
    from toolkit.train.step import Meter, make_optimizer, set_learning_rate

    acc = bf16_accelerator
    model = graph_steps.tiny_svg()
    model, optimizer = acc.prepare(model, make_optimizer(model, 1e-3, (0.9, 0.999), 0.0, acc.device, True))
    acc.save_state(str(tmp_path / "ckpt"), safe_serialization=True)
    acc.load_state(str(tmp_path / "ckpt"))
    print(f"learning rate as the checkpoint restored it: {optimizer.param_groups[0]['lr']!r}")
    meter = Meter(acc.device, 1)
    step = GraphedStep(acc, model, optimizer, meter, 1.0, graph_steps.NOISE_SHAPE)

    def train(start: int, n: int, lr: float) -> float:
        """Steps start..start+n-1 at `lr`; returns how far the weights moved (L2)."""
        before = [p.detach().clone() for p in model.parameters()]
        for i in range(start, start + n):
            set_learning_rate(optimizer, lr)
            step(*graph_steps.structured_batch(i, acc.device), i % 2 == 0, 1e-3)
        return float(torch.cat([(p.detach() - b).flatten() for p, b in zip(model.parameters(), before)]).norm())

    train(0, graph_steps.CAPTURED, 1e-3)  # the warm-ups, then both graphs captured with lr 1e-3
    assert len(step.graphs) == 2 and optimizer.param_groups[0]["lr"].device.type == "cuda"
    n = graph_steps.CAPTURED
    assert train(n, 4, 0.0) == 0.0  # replays at lr 0 leave the weights exactly as they were
    assert train(n + 4, 4, 1e-3) > 0.0


def test_a_resumed_graphed_run_logs_what_an_uninterrupted_one_does(tmp_path, pushing_shards):
    # with a warm-up and a cosine learning rate: after the resume the graphs must read the schedule's values
    # (test_a_resumed_graph_reads_the_learning_rate_it_is_given shows a frozen one directly)
    common = {"mixed_precision": "bf16", "cuda_graphs": True, "epoch_size": 16, "eval_every": 2}
    runs = {}
    for name, epochs in (("whole", [4]), ("resumed", [2, 4])):
        for n in epochs:
            recipe = tiny_recipe(tmp_path / f"{name}.yaml", pushing_shards, tmp_path / name,
                                 schedule={"tfr": 0.5}, optim={"lr_schedule": "cosine", "warmup_steps": 8},
                                 train={**common, "epochs": n, "resume": "auto"})
            proc = run_toolkit("train", str(recipe))
            assert proc.returncode == 0, proc.stderr[-3000:]
            assert "captured the teacher-forced step" in proc.stdout and "cuda_graphs" not in proc.stderr
        runs[name] = [r for r in read_metrics(tmp_path / name) if r["kind"] in ("step", "val")]
    assert [(r["kind"], r["step"]) for r in runs["whole"]] == [(r["kind"], r["step"]) for r in runs["resumed"]]
    for a, b in zip(runs["whole"], runs["resumed"]):
        key = "loss" if a["kind"] == "step" else "psnr"
        assert a[key] == pytest.approx(b[key], rel=BF16_LOSS_RTOL), (a, b)
        assert a.get("teacher_forced") == b.get("teacher_forced") and a.get("lr") == b.get("lr")
    lr = {r["step"]: r["lr"] for r in runs["whole"] if r["kind"] == "step"}
    assert lr[4] < lr[8] and lr[64] < lr[32] < lr[8]  # the warm-up rose, the cosine fell


def test_compile_with_channels_last_trains(tmp_path, pushing_shards):
    recipe = tiny_recipe(tmp_path / "r.yaml", pushing_shards, tmp_path / "run",
                         train={"epochs": 1, "epoch_size": 4, "compile": True, "channels_last": True,
                                "mixed_precision": "bf16"})
    proc = run_toolkit("train", str(recipe))
    assert proc.returncode == 0, proc.stderr[-3000:]
    steps = read_metrics(tmp_path / "run", "step")
    assert len(steps) == 4 and all(np.isfinite(r["loss"]) for r in steps)


def test_the_lstm_dtype_under_bf16_autocast_on_the_gpu():
    # autocast's cuDNN-RNN wrapper casts to float16 whatever autocast's dtype (toolkit/model/lstm.py); the
    # heads after it run in bf16 again
    from toolkit.model.lstm import GaussianLSTM

    module = GaussianLSTM(9, 5, 7, 2).cuda()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        h, _ = module.lstm(module.embed(torch.randn(4, 3, 9, device="cuda")))
        (z, mu, logvar), _ = module(torch.randn(4, 3, 9, device="cuda"))
    print(f"cuDNN LSTM output under bf16 autocast: {h.dtype}; heads: {mu.dtype}")
    assert h.dtype in (torch.float16, torch.bfloat16) and mu.dtype == torch.bfloat16
    assert torch.isfinite(z).all()
