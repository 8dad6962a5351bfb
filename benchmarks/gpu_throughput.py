"""GPU training throughput of the lab model: batch sizes x eager / CUDA graphs / compile x teacher forcing.

    python benchmarks/gpu_throughput.py                          # lab model, batch 12, 48, 96 per GPU
    python benchmarks/gpu_throughput.py --batches 12 --modes eager,graphs --rounds 3
    python benchmarks/gpu_throughput.py --device cpu --model tiny --batches 2 --modes eager --rounds 1  # plumbing

One GPU, bf16 autocast, 12-frame sequences, a fixed random batch, the trainer's step: eager is
`train.step.train_micro_batch`; graphs is `train.graphs.GraphedStep` (its eager warm-up, then one captured
graph per teacher-forcing mode, timed on replays); compile is the eager step with `train.compile`'s compiled
modules. `--profile` first: for the first batch size teacher-forced, eager and graphs, the summed CUDA kernel time of a
step beside its wall time (kernel time / wall time near 1: compute-bound; far below: launch- or host-bound)
and the top kernels. Then per variant: ms/step (median of `--rounds` rounds of `--steps` steps after the
warm-up), sequences/s, MFU = the FLOPs of one step (forward and backward, counted by torch's FlopCounterMode in
bf16) x steps/s / the GPU's dense bf16 peak, and the peak GPU memory allocated (GiB). On a CPU (`--device cpu`,
for the plumbing of benchmarks/gpu_check.sh's dry run) the step runs in float32, graphs are skipped with a line,
and neither MFU nor memory is measured.
"""

from __future__ import annotations

import argparse
import copy
import gc
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import batch, compiled, make_model  # noqa: E402

PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}
"""Dense bf16 tensor-core peaks (FLOP/s) by GPU name."""


def step_fn(mode: str, model, size: int, teacher_forcing: bool, device: str = "cuda"):
    """A closure running one training step of `mode` (eager, graphs, compile) on a fixed batch."""
    from accelerate import Accelerator
    from accelerate.utils import AutocastKwargs

    from toolkit.train.batchnorm import track_running_stats
    from toolkit.train.graphs import GraphedStep
    from toolkit.train.step import Meter, make_optimizer, train_micro_batch

    acc = Accelerator(cpu=device == "cpu", mixed_precision="bf16" if device == "cuda" else "no",
                      kwargs_handlers=[AutocastKwargs(cache_enabled=mode != "graphs")])
    track_running_stats(model, False)  # as the trainer with train.bn_batches > 0
    if mode == "compile":
        model = compiled(model)
    optimizer = make_optimizer(model, 2e-3, (0.9, 0.999), 0.0, acc.device, capturable=mode == "graphs")
    model, optimizer = acc.prepare(model, optimizer)
    meter = Meter(acc.device, 1)
    frames, cond = batch(size, device)
    if mode == "graphs":
        graphed = GraphedStep(acc, model, optimizer, meter, 0.0, (11, size, model.cfg.z_dim))
        return lambda: graphed(frames, cond, teacher_forcing, 1e-4)
    return lambda: train_micro_batch(acc, model, optimizer, meter, frames, cond, teacher_forcing, 1e-4, 0.0)


def count_flops(model, size: int, teacher_forcing: bool, device: str = "cuda") -> float:
    from torch.utils.flop_counter import FlopCounterMode

    frames, cond = batch(size, device)
    with FlopCounterMode(display=False) as counter, torch.autocast(device, torch.bfloat16, device == "cuda"):
        model(frames, cond, teacher_forcing, 1e-4)["loss"].backward()
    return float(counter.get_total_flops())


def sync() -> None:
    if torch.cuda.is_initialized():
        torch.cuda.synchronize()


def timed(fn, warmup: int, rounds: int, steps: int) -> float:
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(steps):
            fn()
        sync()
        times.append((time.perf_counter() - start) / steps)
    return statistics.median(times)


def profile(fn, steps: int) -> None:
    from torch.profiler import ProfilerActivity, profile as torch_profile

    sync()
    start = time.perf_counter()
    with torch_profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            fn()
        sync()
    wall = (time.perf_counter() - start) / steps
    events = [e for e in prof.key_averages() if e.device_type.name == "CUDA"]
    kernel = sum(e.self_device_time_total for e in events) / steps / 1e6
    print(f"profile: {wall * 1e3:.2f} ms/step wall, {kernel * 1e3:.2f} ms/step of CUDA kernels "
          f"({kernel / wall:.0%} of the wall time; the rest is launch and host time)")
    for e in sorted(events, key=lambda e: -e.self_device_time_total)[:6]:
        print(f"  {e.self_device_time_total / steps / 1e3:8.3f} ms  {e.count // steps:5d}x  {e.key[:90]}")


def variant(args, base, mode: str, size: int, tf: bool, flops: float, peak: float | None) -> str:
    """One row of the table (or why the variant has none)."""
    name = f"{size:5d} {mode:<8} {'on' if tf else 'off':>15}"
    if mode == "graphs" and args.device != "cuda":
        return f"{name} skipped: CUDA graphs need a CUDA device"
    cuda = args.device == "cuda"
    if cuda:
        gc.collect()  # the previous variant's model, optimizer and graphs
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    try:
        sec = timed(step_fn(mode, copy.deepcopy(base), size, tf, args.device), args.warmup, args.rounds, args.steps)
    except Exception as e:  # one failing variant does not hide the others' figures
        return f"{name} failed: {type(e).__name__}: {str(e).splitlines()[0][:150]}"
    mfu = f"{flops / sec / peak:7.1%}" if peak else "      ?"
    memory = f"{torch.cuda.max_memory_allocated() / 2 ** 30:8.2f}" if cuda else "       -"
    return f"{name} {sec * 1e3:9.2f} {size / sec:8.0f} {flops / 1e12:11.3f} {mfu} {memory}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="full", choices=["tiny", "full"])
    p.add_argument("--batches", default="12,48,96")
    p.add_argument("--modes", default="eager,graphs,compile")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=25, help="untimed steps first (graphs: more than 11)")
    p.add_argument("--profile", action="store_true", help="first, a profile of the first batch size (eager and graphs)")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cpu: the plumbing only")
    args = p.parse_args()
    gpu = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    peak = next((v for k, v in PEAK_BF16.items() if k in gpu), None)
    base = make_model(args.model, channels_last=True).to(args.device)
    print(f"# {gpu}, torch {torch.__version__}, {args.model} model ({base.param_count():,} parameters), "
          f"{'bf16' if args.device == 'cuda' else 'float32'}, "
          f"12 frames; median of {args.rounds} x {args.steps} steps after {args.warmup} warm-up steps", flush=True)
    sizes = [int(b) for b in args.batches.split(",")]
    if args.profile:
        for mode in ("eager", "graphs") if args.device == "cuda" else ("eager",):
            print(f"# {mode}, batch {sizes[0]}, teacher forcing on", flush=True)
            fn = step_fn(mode, copy.deepcopy(base), sizes[0], True, args.device)
            timed(fn, args.warmup, 1, 1)
            profile(fn, 5 if args.device == "cuda" else 1)
    print(f"{'batch':>5} {'mode':<8} {'teacher forcing':>15} {'ms/step':>9} {'seq/s':>8} {'TFLOP/step':>11} {'MFU':>7} "
          f"{'peak GiB':>8}", flush=True)
    for size in sizes:
        for tf in (True, False):
            flops = count_flops(copy.deepcopy(base), size, tf, args.device)
            for mode in args.modes.split(","):
                print(variant(args, base, mode, size, tf, flops, peak), flush=True)


if __name__ == "__main__":
    main()
