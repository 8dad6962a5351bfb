"""CPU training throughput: the toolkit's step against the port of edenton/svg's loop, 1 vs 2 processes, loader.

    python benchmarks/throughput.py                         # tiny and full lab model (about 20 minutes)
    python benchmarks/throughput.py --models tiny --rounds 5 --no-scaling
    (on a GPU: benchmarks/gpu_throughput.py)

Every figure is a ratio of, or sits beside, figures measured in the same run: variants alternate within each
round (order reversed every other round), after warm-up steps, and the median over the rounds is reported.
All steps are compute only (a fixed random batch of `--batch` sequences of 12 frames) except the loader line;
every process runs one thread with glibc's allocator set as `cvae` sets it at start-up
(`toolkit.allocator.keep_freed_memory`: freed tensors' memory is reused instead of mapped afresh; without it a
tiny teacher-forced step at batch 12 page-faults about 87,000 times).

- step: seconds per training step (forward, backward, Adam), teacher forcing on and off, of
  - the toolkit's trainer step (`train.step.train_micro_batch` under Accelerate, channels_last as the trainer's
    default; also NCHW), training steps leaving BatchNorm's running statistics alone as the trainer does with
    its default `train.bn_batches`;
  - the port of edenton/svg's loop (`toolkit.model.reference`: its call pattern, stacked LSTM cells, NCHW as
    edenton/svg runs, one Adam per module), the yardstick: ratios are toolkit / port.
- compile: the trainer step with `train.compile` (torch.compile of the encoder and the decoder).
- scaling: sequences/s of 1 process and of 2 DDP processes (gloo, `accelerate launch`); efficiency = the 2
  processes' total / twice the single process's.
- loader headroom: the png training stream's sequences/s (one worker, 12-frame windows) / the training step's.
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
sys.path.insert(0, str(REPO))
MODELS = {"tiny": dict(width=0.125, g_dim=32, z_dim=8, rnn_size=64), "full": dict()}


def make_model(name: str, channels_last: bool, **overrides):
    from toolkit.config import ModelConfig
    from toolkit.model import SVG

    torch.manual_seed(0)
    model = SVG(ModelConfig(**MODELS[name], **overrides), cond_dim=7, n_past=2).train()
    return model.to(memory_format=torch.channels_last) if channels_last else model


def batch(size: int, device: str = "cpu", seq_len: int = 12):
    g = torch.Generator().manual_seed(1)
    return (torch.rand(size, seq_len, 3, 64, 64, generator=g).to(device),
            torch.randn(size, seq_len, 7, generator=g).to(device))


def trainer_step(model, size: int, teacher_forcing: bool, precision: str = "no", device: str = "cpu"):
    """A closure running one step exactly as the trainer does (Accelerate, fused Adam, device-side meter)."""
    from accelerate import Accelerator

    from toolkit.train.batchnorm import track_running_stats
    from toolkit.train.step import Meter, make_optimizer, train_micro_batch

    acc = Accelerator(cpu=device == "cpu", mixed_precision=precision)
    track_running_stats(model, False)  # as the trainer with train.bn_batches > 0
    optimizer = make_optimizer(model, 2e-3, (0.9, 0.999), 0.0, acc.device)
    model, optimizer = acc.prepare(model, optimizer)
    meter = Meter(acc.device, acc.num_processes)
    frames, cond = batch(size, device)
    return lambda: train_micro_batch(acc, model, optimizer, meter, frames, cond, teacher_forcing, 1e-4, 0.0)


def port_step(model, size: int, teacher_forcing: bool):
    from toolkit.model.reference import reference_optimizers, reference_step

    optimizers = reference_optimizers(model, 2e-3, (0.9, 0.999))
    frames, cond = batch(size)
    return lambda: reference_step(model, optimizers, frames, cond, 1e-4, teacher_forcing)


def timed_rounds(variants: dict, rounds: int, steps: int, warmup: int, sync=lambda: None) -> dict[str, float]:
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


def compiled(model):
    """As `train.compile`: the encoder and the decoder compiled in place."""
    model.encoder.compile()
    model.decoder.compile()
    return model


def step_section(args, name: str) -> dict[str, float]:
    """The trainer's step (channels_last and NCHW; compiled if asked) against the port, teacher forcing on and
    off; every variant starts from the same weights (edenton/svg's skip source, which the port needs)."""
    base = make_model(name, channels_last=False, skip_from="reference")
    variants = {}
    for tf in (True, False):
        mode = "tf" if tf else "free"
        variants[f"port/{mode}"] = port_step(copy.deepcopy(base), args.batch, tf)
        variants[f"toolkit/{mode}"] = trainer_step(copy.deepcopy(base).to(memory_format=torch.channels_last),
                                                   args.batch, tf)
        variants[f"toolkit NCHW/{mode}"] = trainer_step(copy.deepcopy(base), args.batch, tf)
        if args.compile == "on" and name == "tiny":
            model = compiled(copy.deepcopy(base).to(memory_format=torch.channels_last))
            variants[f"toolkit compiled/{mode}"] = trainer_step(model, args.batch, tf)
    steps = args.steps or (3 if name == "tiny" else 1)
    return timed_rounds(variants, args.rounds, steps, args.warmup)


def worker(args) -> None:
    """Under `accelerate launch`: time the trainer's step on every rank, print rank 0's seq/s per process."""
    from accelerate import PartialState

    from toolkit.allocator import keep_freed_memory

    keep_freed_memory()
    torch.set_num_threads(1)
    step = trainer_step(make_model(args.worker, channels_last=True), args.batch, True)
    steps = args.steps or (3 if args.worker == "tiny" else 1)
    for _ in range(args.warmup):
        step()
    rates, state = [], PartialState()
    for _ in range(args.rounds):
        state.wait_for_everyone()
        start = time.perf_counter()
        for _ in range(steps):
            step()
        rates.append(args.batch * steps / (time.perf_counter() - start))
    if state.is_main_process:
        print("RESULT " + json.dumps({"seq_per_s_per_process": statistics.median(rates)}), flush=True)


def scaling_section(args, name: str) -> dict[int, float]:
    """Sequences/s per process with 1 and with 2 DDP processes (one thread each)."""
    from toolkit.launcher import free_port

    out = {}
    for procs, config in ((1, "cpu1.yaml"), (2, "cpu.yaml")):
        cmd = [sys.executable, "-m", "accelerate.commands.accelerate_cli", "launch", "--config_file",
               str(REPO / "recipes" / "accelerate" / config), "--main_process_port", str(free_port()), __file__,
               "--worker", name, "--rounds", str(args.rounds), "--batch", str(args.batch),
               "--warmup", str(args.warmup)] + (["--steps", str(args.steps)] if args.steps else [])
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            raise RuntimeError(proc.stderr[-3000:])
        out[procs] = json.loads(line[7:])["seq_per_s_per_process"]
    return out


def loader_rate(args) -> float:
    """Sequences/s of the png training stream (one worker, 12-frame windows, batch 12), median of rounds."""
    from toolkit.data.loader import train_loader

    shards = args.shards if (Path(args.shards) / "manifest.json").is_file() else make_shards()
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


def report(name: str, size: int, seconds: dict[str, float], scaling: dict | None, loader: float | None) -> None:
    print(f"\n## {name} model, batch {size}, 12 frames, CPU, 1 thread per process")
    print(f"{'variant':<18} {'teacher forcing':>15} {'s/step':>9} {'seq/s':>8} {'vs port':>9}")
    for label in dict.fromkeys(k.split("/")[0] for k in seconds):
        for mode in ("tf", "free"):
            sec, port = seconds[f"{label}/{mode}"], seconds[f"port/{mode}"]
            print(f"{label:<18} {'on' if mode == 'tf' else 'off':>15} {sec:9.4f} {size / sec:8.1f} {sec / port:8.3f}x")
    if scaling:
        print(f"scaling: 1 process {scaling[1]:.2f} seq/s, 2 DDP processes {scaling[2]:.2f} seq/s each "
              f"({2 * scaling[2]:.2f} total): efficiency {scaling[2] / scaling[1]:.3f}")
    if loader:
        rate = size / seconds["toolkit/tf"]
        print(f"loader headroom: png train stream {loader:.0f} seq/s (1 worker) / training {rate:.1f} seq/s = "
              f"{loader / rate:.1f}x")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="tiny,full", help="comma-separated: tiny, full")
    p.add_argument("--batch", type=int, default=12)
    p.add_argument("--compile", choices=["on", "off"], default="off", help="also the compiled tiny model")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, help="steps per round and variant (default: 3, full model 1)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per variant first")
    p.add_argument("--no-scaling", action="store_true", help="skip the 1 vs 2 process measurement")
    p.add_argument("--shards", default=str(REPO / "shards" / "pushing"), help="shards for the loader line")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    from toolkit.allocator import keep_freed_memory

    keep_freed_memory()  # as the trainer: cli.main sets it before anything else
    torch.set_num_threads(1)
    print(f"# torch {torch.__version__}, {args.rounds} rounds (median) after {args.warmup} warm-up steps, "
          f"cpu_count {os.cpu_count()}")
    loader = loader_rate(args)
    for name in args.models.split(","):
        seconds = step_section(args, name)
        scaling = None if args.no_scaling else scaling_section(args, name)
        report(name, args.batch, seconds, scaling, loader)


if __name__ == "__main__":
    main()
