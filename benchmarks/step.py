"""Training-step time of `SVG` vs a straight port of the reference loop (github.com/edenton/svg train_svg_fp.py).

One step = forward + backward + Adam step, teacher forcing on, batch 12, T = 12, n_past 2, cond 7, CPU.
The reference port (`toolkit.model.reference`) runs a copy of the same modules with the same weights, resets
the hidden state per batch and loops over steps in Python, encoding the input and the target frame at every step
(two encoder calls) and decoding each step separately, with one Adam per module as in the reference.
Runs alternate side by side in one process (warmup, then rounds x steps each, order swapped every round) and the
medians of the per-round seconds/step are reported.

    python benchmarks/step.py --config tiny
    python benchmarks/step.py --config full --rounds 1 --steps 1
    python benchmarks/step.py --config tiny --channels-last   # both sides in channels_last memory format
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from toolkit.config import ModelConfig
from toolkit.model import SVG
from toolkit.model.reference import reference_optimizers, reference_step

CONFIGS = {
    "tiny": dict(width=0.125, g_dim=32, z_dim=8, rnn_size=64),
    "full": dict(),  # the reference defaults: width 1, g_dim 128, z_dim 64, rnn_size 256
}
DEFAULT_SCHEDULE = {"tiny": (5, 3, 2), "full": (3, 1, 1)}  # rounds, steps, warmup


def our_step(model: SVG, opt: torch.optim.Optimizer, frames: torch.Tensor, cond: torch.Tensor, beta: float) -> float:
    opt.zero_grad()
    loss = model(frames, cond, teacher_forcing=True, beta=beta)["loss"]
    loss.backward()
    opt.step()
    return loss.item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), default="tiny")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None, help="steps per round and side")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps per side first")
    parser.add_argument("--batch", type=int, default=12)
    parser.add_argument("--seq-len", type=int, default=12)
    parser.add_argument("--channels-last", action="store_true", help="both models in channels_last format")
    args = parser.parse_args()
    rounds, steps, warmup = DEFAULT_SCHEDULE[args.config]
    rounds, steps = args.rounds or rounds, args.steps or steps
    warmup = warmup if args.warmup is None else args.warmup

    torch.manual_seed(0)
    cfg = ModelConfig(**CONFIGS[args.config])
    ours = SVG(cfg, cond_dim=7, n_past=2).train()
    if args.channels_last:
        ours = ours.to(memory_format=torch.channels_last)  # conv outputs follow the weights' format
    ref = copy.deepcopy(ours)  # same weights, its own optimizer state
    lr, betas = 2e-3, (0.9, 0.999)
    our_opt = torch.optim.Adam(ours.parameters(), lr=lr, betas=betas)
    ref_opts = reference_optimizers(ref, lr, betas)
    frames = torch.rand(args.batch, args.seq_len, 3, 64, 64)
    cond = torch.randn(args.batch, args.seq_len, 7)
    run = {"reference": lambda: reference_step(ref, ref_opts, frames, cond, 1e-4)["loss"].item(),
           "ours": lambda: our_step(ours, our_opt, frames, cond, 1e-4)}
    for _ in range(warmup):
        for fn in run.values():
            fn()
    times = {name: [] for name in run}
    for r in range(rounds):
        order = list(run) if r % 2 == 0 else list(run)[::-1]
        for name in order:
            start = time.perf_counter()
            for _ in range(steps):
                run[name]()
            times[name].append((time.perf_counter() - start) / steps)
    ref_s, our_s = statistics.median(times["reference"]), statistics.median(times["ours"])
    fmt = "channels_last" if args.channels_last else "NCHW"
    print(f"# {ours.param_count():,} parameters, batch {args.batch}, T {args.seq_len}, n_past 2, cond 7, {fmt}, "
          f"{torch.get_num_threads()} threads, {rounds} rounds x {steps} steps (+{warmup} warmup)")
    print(f"{'config':<8} {'reference s/step':>17} {'ours s/step':>12} {'ours/reference':>15}")
    print(f"{args.config:<8} {ref_s:>17.4f} {our_s:>12.4f} {our_s / ref_s:>15.3f}")


if __name__ == "__main__":
    main()
