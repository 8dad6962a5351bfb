"""GPU training throughput of the lab model: batch sizes x eager / CUDA graphs / compile x teacher forcing.

    python benchmarks/gpu_throughput.py                          # lab model, batch 12, 48, 96 per GPU
    python benchmarks/gpu_throughput.py --batches 12 --modes eager,graphs --rounds 3

One GPU, bf16 autocast, 12-frame sequences, a fixed random batch, the trainer's step: eager is
`train.step.train_micro_batch`; graphs is `train.graphs.GraphedStep` (its eager warm-up, then one captured
graph per teacher-forcing mode, timed on replays); compile is the eager step with `train.compile`'s compiled
modules. Per variant: ms/step (median of `--rounds` rounds of `--steps` steps after the warm-up), sequences/s
and MFU = the FLOPs of one step (forward and backward, counted by torch's FlopCounterMode in bf16) x steps/s /
the GPU's dense bf16 peak. `--profile` adds, for batch 12 teacher-forced, the summed CUDA kernel time of a
step beside its wall time (kernel time / wall time near 1: compute-bound; far below: launch- or host-bound)
and the top kernels.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import batch, compiled, make_model  # noqa: E402

PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}
"""Dense bf16 tensor-core peaks (FLOP/s) by GPU name."""


def step_fn(mode: str, model, size: int, teacher_forcing: bool):
    """A closure running one training step of `mode` (eager, graphs, compile) on a fixed batch."""
    from accelerate import Accelerator
    from accelerate.utils import AutocastKwargs

    from toolkit.train.batchnorm import track_running_stats
    from toolkit.train.graphs import GraphedStep
    from toolkit.train.step import Meter, make_optimizer, train_micro_batch

    acc = Accelerator(mixed_precision="bf16", kwargs_handlers=[AutocastKwargs(cache_enabled=mode != "graphs")])
    track_running_stats(model, False)  # as the trainer with train.bn_batches > 0
    if mode == "compile":
        model = compiled(model)
    optimizer = make_optimizer(model, 2e-3, (0.9, 0.999), 0.0, acc.device, capturable=mode == "graphs")
    model, optimizer = acc.prepare(model, optimizer)
    meter = Meter(acc.device, 1)
    frames, cond = batch(size, "cuda")
    if mode == "graphs":
        graphed = GraphedStep(acc, model, optimizer, meter, 0.0, (11, size, model.cfg.z_dim))
        return lambda: graphed(frames, cond, teacher_forcing, 1e-4)
    return lambda: train_micro_batch(acc, model, optimizer, meter, frames, cond, teacher_forcing, 1e-4, 0.0)


def count_flops(model, size: int, teacher_forcing: bool) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    frames, cond = batch(size, "cuda")
    with FlopCounterMode(display=False) as counter, torch.autocast("cuda", dtype=torch.bfloat16):
        model(frames, cond, teacher_forcing, 1e-4)["loss"].backward()
    return float(counter.get_total_flops())


def timed(fn, warmup: int, rounds: int, steps: int) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(steps):
            fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - start) / steps)
    return statistics.median(times)


def profile(fn, steps: int = 5) -> None:
    from torch.profiler import ProfilerActivity, profile as torch_profile

    torch.cuda.synchronize()
    start = time.perf_counter()
    with torch_profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            fn()
        torch.cuda.synchronize()
    wall = (time.perf_counter() - start) / steps
    events = [e for e in prof.key_averages() if e.device_type.name == "CUDA"]
    kernel = sum(e.self_device_time_total for e in events) / steps / 1e6
    print(f"profile: {wall * 1e3:.2f} ms/step wall, {kernel * 1e3:.2f} ms/step of CUDA kernels "
          f"({kernel / wall:.0%} of the wall time; the rest is launch and host time)")
    for e in sorted(events, key=lambda e: -e.self_device_time_total)[:6]:
        print(f"  {e.self_device_time_total / steps / 1e3:8.3f} ms  {e.count // steps:5d}x  {e.key[:90]}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="full", choices=["tiny", "full"])
    p.add_argument("--batches", default="12,48,96")
    p.add_argument("--modes", default="eager,graphs,compile")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=25, help="untimed steps first (graphs: more than 11)")
    p.add_argument("--profile", action="store_true")
    args = p.parse_args()
    gpu = torch.cuda.get_device_name()
    peak = next((v for k, v in PEAK_BF16.items() if k in gpu), None)
    base = make_model(args.model, channels_last=True).cuda()
    print(f"# {gpu}, torch {torch.__version__}, {args.model} model ({base.param_count():,} parameters), bf16, "
          f"12 frames; median of {args.rounds} x {args.steps} steps after {args.warmup} warm-up steps")
    print(f"{'batch':>5} {'mode':<8} {'teacher forcing':>15} {'ms/step':>9} {'seq/s':>8} {'TFLOP/step':>11} {'MFU':>7}")
    for size in map(int, args.batches.split(",")):
        for tf in (True, False):
            flops = count_flops(copy.deepcopy(base), size, tf)
            for mode in args.modes.split(","):
                try:
                    sec = timed(step_fn(mode, copy.deepcopy(base), size, tf), args.warmup, args.rounds, args.steps)
                except Exception as e:  # one failing variant does not hide the others' figures
                    print(f"{size:5d} {mode:<8} {'on' if tf else 'off':>15} failed: {type(e).__name__}: "
                          f"{str(e).splitlines()[0][:150]}", flush=True)
                    continue
                mfu = f"{flops / sec / peak:7.1%}" if peak else "      ?"
                print(f"{size:5d} {mode:<8} {'on' if tf else 'off':>15} {sec * 1e3:9.2f} {size / sec:8.0f} "
                      f"{flops / 1e12:11.3f} {mfu}", flush=True)
    if args.profile:
        for mode in ("eager", "graphs"):
            print(f"# {mode}, batch 12, teacher forcing on")
            fn = step_fn(mode, copy.deepcopy(base), 12, True)
            timed(fn, args.warmup, 1, 1)
            profile(fn)


if __name__ == "__main__":
    main()
