"""Training throughput: the toolkit's step against the reference loop, compile, 1 vs 2 processes, loader headroom.

    python benchmarks/throughput.py                         # CPU: tiny and full lab model (about 15 minutes)
    python benchmarks/throughput.py --models tiny --rounds 3
    python benchmarks/throughput.py --device cuda --models full --compile both   # a GPU: bf16, MFU

Every figure is a ratio of, or sits beside, figures measured in the same run: variants alternate within each
round (order reversed every other round), after warm-up steps, and the median over the rounds is reported.
All steps are compute only (a fixed random batch of `--batch` sequences of 12 frames, teacher forcing on)
except the loader line. On a CPU every process runs one thread.

- step: seconds per training step (forward, backward, Adam) of the toolkit's trainer step
  (`train.step.train_micro_batch` under Accelerate, channels_last as the trainer's default, and NCHW) and of
  the straight port of the reference loop (`toolkit.model.reference`, NCHW as the reference runs, one Adam per
  module).
- compile: the same trainer step with `train.compile` (torch.compile of encoder, decoder and LSTMs).
- scaling: sequences/s of 1 process and of 2 DDP processes (gloo, `accelerate launch`); efficiency = the 2
  processes' total / twice the single process's.
- loader headroom: the png training stream's sequences/s (one worker, 12-frame windows) / the training step's.
- on a GPU: bf16 autocast; sequences/s, ms/step and MFU = counted FLOPs per step (torch's FlopCounterMode) x
  steps/s / the GPU's dense bf16 peak; also the default model with `model.bn_stats: batch`, and with the
  per-step BatchNorm computed one call per step (the CPU form) instead of in one reduction.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
MODELS = {"tiny": dict(width=0.125, g_dim=32, z_dim=8, rnn_size=64), "full": dict()}
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}
"""Dense bf16 tensor-core peaks (FLOP/s) by GPU name."""


def make_model(name: str, device: str, channels_last: bool, **overrides):
    from toolkit.config import ModelConfig
    from toolkit.model import SVG

    torch.manual_seed(0)
    model = SVG(ModelConfig(**MODELS[name], **overrides), cond_dim=7, n_past=2).to(device).train()
    return model.to(memory_format=torch.channels_last) if channels_last else model


def trainer_step(model, device: str, precision: str):
    """A closure running one step exactly as the trainer does (Accelerate, fused Adam, device-side meter)."""
    from accelerate import Accelerator

    from toolkit.train.step import Meter, make_optimizer, train_micro_batch

    acc = Accelerator(cpu=device == "cpu", mixed_precision=precision)
    optimizer = make_optimizer(model, 2e-3, (0.9, 0.999), 0.0, acc.device)
    model, optimizer = acc.prepare(model, optimizer)
    meter = Meter(acc.device, acc.num_processes)
    frames, cond = batch(device)

    def step():
        train_micro_batch(acc, model, optimizer, meter, frames, cond, True, 1e-4, 0.0)
    return step, acc


def batch(device: str, size: int = 12, seq_len: int = 12):
    g = torch.Generator().manual_seed(1)
    return (torch.rand(size, seq_len, 3, 64, 64, generator=g).to(device),
            torch.randn(size, seq_len, 7, generator=g).to(device))


def timed_rounds(variants: dict, rounds: int, steps: int, warmup: int, sync) -> dict[str, float]:
    """Median seconds per step of each variant; variants alternate in each round."""
    for fn in variants.values():
        for _ in range(warmup):
            fn()
    sync()
    times = {name: [] for name in variants}
    for r in range(rounds):
        for name in (list(variants) if r % 2 == 0 else list(variants)[::-1]):
            start = time.perf_counter()
            for _ in range(steps):
                variants[name]()
            sync()
            times[name].append((time.perf_counter() - start) / steps)
    return {name: statistics.median(t) for name, t in times.items()}


def port_step(model, device: str):
    from toolkit.model.reference import reference_optimizers, reference_step

    optimizers = reference_optimizers(model, 2e-3, (0.9, 0.999))
    frames, cond = batch(device)
    return lambda: reference_step(model, optimizers, frames, cond, 1e-4)


def compiled(model):
    for module in (model.encoder, model.decoder, model.predictor, model.posterior):
        module.compile()
    return model


def step_section(args, name: str) -> dict:
    """The trainer's step (eager, and compiled if asked) against the port of the reference loop."""
    device, precision = args.device, "bf16" if args.device == "cuda" else "no"
    # edenton/svg's skip source on both sides, so the port can run the same weights (the toolkit's cost does not
    # depend on which context frame the skips come from)
    base = make_model(name, device, channels_last=False, skip_from="reference")
    variants = {}
    if device == "cpu":
        variants["reference port"] = port_step(copy.deepcopy(base), device)
    for label, use_compile in (("toolkit", False), ("toolkit compiled", True)):
        if use_compile and args.compile == "off" or not use_compile and args.compile == "only":
            continue
        model = copy.deepcopy(base).to(memory_format=torch.channels_last)
        variants[label], _ = trainer_step(compiled(model) if use_compile else model, device, precision)
    if device == "cpu" and args.compile != "only":  # the memory format the trainer defaults to, measured
        variants["toolkit, NCHW"], _ = trainer_step(copy.deepcopy(base), device, precision)
    if device == "cuda" and args.compile != "only":  # the cost of per-step BatchNorm statistics on a GPU
        model = make_model(name, device, channels_last=True, bn_stats="batch")
        variants["toolkit, bn_stats batch"], _ = trainer_step(model, device, precision)
        step, _ = trainer_step(copy.deepcopy(base).to(memory_format=torch.channels_last), device, precision)
        variants["toolkit, BN per chunk"] = with_chunked_batch_norm(step)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    seconds = timed_rounds(variants, args.rounds, args.steps or (3 if name == "tiny" or device == "cuda" else 1),
                           args.warmup if args.warmup is not None else (20 if device == "cuda" else 2), sync)
    return {"seconds": seconds, "flops": count_flops(copy.deepcopy(base), device) if device == "cuda" else None}


def with_chunked_batch_norm(step):
    """The step with per-step BatchNorm as one call per time step (the CPU form) instead of one reduction."""
    from toolkit.model import vgg64

    def run():
        original = vgg64.per_step_batch_norm
        vgg64.per_step_batch_norm = lambda bn, x, groups: torch.cat([bn(block) for block in x.chunk(groups)])
        try:
            step()
        finally:
            vgg64.per_step_batch_norm = original
    return run


def count_flops(model, device: str) -> float:
    """FLOPs of one training step (forward + backward) in bf16, counted by torch."""
    from torch.utils.flop_counter import FlopCounterMode

    frames, cond = batch(device)
    with FlopCounterMode(display=False) as counter, torch.autocast(device, dtype=torch.bfloat16):
        model(frames, cond, True, 1e-4)["loss"].backward()
    return float(counter.get_total_flops())


def worker(args) -> None:
    """Under `accelerate launch`: time the trainer's step on every rank, print rank 0's seq/s per process."""
    torch.set_num_threads(1)
    model = make_model(args.worker, "cpu", channels_last=True)
    step, acc = trainer_step(model, "cpu", "no")
    steps = args.steps or (3 if args.worker == "tiny" else 1)
    for _ in range(2 if args.worker == "tiny" else 1):
        step()
    rates = []
    for _ in range(args.rounds):
        acc.wait_for_everyone()
        start = time.perf_counter()
        for _ in range(steps):
            step()
        rates.append(12 * steps / (time.perf_counter() - start))
    if acc.is_main_process:
        print("RESULT " + json.dumps({"seq_per_s_per_process": statistics.median(rates)}), flush=True)


def scaling_section(args, name: str) -> dict:
    """Sequences/s per process with 1 and with 2 DDP processes (one thread each)."""
    from toolkit.launcher import free_port

    out = {}
    for procs, config in ((1, "cpu1.yaml"), (2, "cpu.yaml")):
        cmd = [sys.executable, "-m", "accelerate.commands.accelerate_cli", "launch", "--config_file",
               str(REPO / "recipes" / "accelerate" / config), "--main_process_port", str(free_port()), __file__,
               "--worker", name, "--rounds", str(args.rounds)] + (["--steps", str(args.steps)] if args.steps else [])
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            raise RuntimeError(proc.stderr[-3000:])
        out[procs] = json.loads(line[7:])["seq_per_s_per_process"]
    return out


def loader_rate(args) -> float:
    """Sequences/s of the png training stream (one worker, 12-frame windows, batch 12), median of rounds."""
    from toolkit.data.loader import train_loader

    shards = args.shards
    if not (Path(shards) / "manifest.json").is_file():
        shards = make_shards()
    rates = []
    for _ in range(args.rounds + 1):  # the first round warms the page cache and the worker start-up
        start = time.perf_counter()
        n = sum(b.frames.shape[0] for b in train_loader(shards, "train", 12, 40, 12, seed=0, epoch=0,
                                                         num_workers=1))
        rates.append(n / (time.perf_counter() - start))
    return statistics.median(rates[1:])


def make_shards() -> str:
    from toolkit.data.shards.convert import convert
    from toolkit.data.worlds.synth import generate_dataset

    work = Path(tempfile.mkdtemp(prefix="cvae-throughput-"))
    generate_dataset(work / "folders", "pushing", {"train": 200, "validate": 0, "test": 0}, progress=False)
    convert(work / "folders", work / "shards", maxcount=64, progress=False)
    return str(work / "shards")


def report_cpu(name: str, step: dict, scaling: dict | None, loader: float | None) -> None:
    s = step["seconds"]
    ref = s.get("reference port")
    print(f"\n## {name} model, batch 12, 12 frames, CPU, 1 thread per process")
    print(f"{'variant':<20} {'s/step':>9} {'seq/s':>8} {'vs reference port':>18}")
    for label, sec in s.items():
        print(f"{label:<20} {sec:9.4f} {12 / sec:8.1f} {sec / ref:17.3f}x" if ref else f"{label:<20} {sec:9.4f}")
    if scaling:
        eff = scaling[2] / scaling[1]
        print(f"scaling: 1 process {scaling[1]:.2f} seq/s, 2 DDP processes {scaling[2]:.2f} seq/s each "
              f"({2 * scaling[2]:.2f} total): efficiency {eff:.3f}")
    if loader:
        print(f"loader headroom: png train stream {loader:.0f} seq/s (1 worker) / training {12 / s['toolkit']:.1f} "
              f"seq/s = {loader * s['toolkit'] / 12:.1f}x")


def report_cuda(name: str, step: dict) -> None:
    gpu = torch.cuda.get_device_name()
    peak = next((v for k, v in PEAK_BF16.items() if k in gpu), None)
    print(f"\n## {name} model on {gpu}, bf16 autocast, batch 12, 12 frames; {step['flops'] / 1e12:.3f} TFLOP per step")
    print(f"{'variant':<20} {'ms/step':>9} {'seq/s':>8} {'MFU':>7}")
    for label, sec in step["seconds"].items():
        mfu = f"{step['flops'] / sec / peak:7.1%}" if peak else "      ?"
        print(f"{label:<20} {sec * 1e3:9.2f} {12 / sec:8.0f} {mfu}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--models", default="tiny,full", help="comma-separated: tiny, full")
    p.add_argument("--compile", choices=["on", "off", "both", "only"], default="both",
                   help="CPU default: compile the tiny model only (`both`), never the full one")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, help="steps per round and variant (default: 3, full model on CPU 1)")
    p.add_argument("--warmup", type=int, help="untimed steps per variant first (default 2; 20 on a GPU)")
    p.add_argument("--no-scaling", action="store_true", help="skip the 1 vs 2 process measurement")
    p.add_argument("--shards", default=str(REPO / "shards" / "pushing"), help="shards for the loader line")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    torch.set_num_threads(1) if args.device == "cpu" else None
    print(f"# torch {torch.__version__}, {args.rounds} rounds (median) after warm-up, cpu_count {os.cpu_count()}")
    loader = loader_rate(args) if args.device == "cpu" else None
    for name in args.models.split(","):
        if args.device == "cpu" and name == "full" and args.compile == "both":
            args_full = argparse.Namespace(**{**vars(args), "compile": "off"})
            step = step_section(args_full, name)
        else:
            step = step_section(args, name)
        if args.device == "cuda":
            report_cuda(name, step)
            continue
        scaling = None if args.no_scaling else scaling_section(args, name)
        report_cpu(name, step, scaling, loader)


if __name__ == "__main__":
    main()
