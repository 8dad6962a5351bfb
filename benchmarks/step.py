"""Training-step time of `SVG` vs a straight port of the reference loop (github.com/edenton/svg train_svg_fp.py).

One step = forward + backward + Adam step, teacher forcing on, batch 12, T = 12, n_past 2, cond 7, CPU.
The reference port uses the same encoder/decoder/predictor/posterior modules (a copy with the same weights), resets
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
import torch.nn.functional as F

from toolkit.config import ModelConfig
from toolkit.model import SVG

CONFIGS = {
    "tiny": dict(width=0.125, g_dim=32, z_dim=8, rnn_size=64),
    "full": dict(),  # the reference defaults: width 1, g_dim 128, z_dim 64, rnn_size 256
}
DEFAULT_SCHEDULE = {"tiny": (5, 3, 2), "full": (3, 1, 1)}  # rounds, steps, warmup


def reference_step(model: SVG, optims: list[torch.optim.Optimizer], x: list[torch.Tensor], cond: list[torch.Tensor],
                   beta: float) -> float:
    """train() of train_svg_fp.py (plus cond concatenation), with the toolkit's explicit-state modules."""
    for opt in optims:
        opt.zero_grad()
    post = pred = None  # hidden state reset per batch
    mse, kld = 0.0, 0.0
    batch_size = x[0].shape[0]
    for i in range(1, len(x)):
        h = model.encoder(x[i - 1])
        h_target = model.encoder(x[i])[0]
        if model.cfg.last_frame_skip or i < model.n_past:
            h, skip = h
        else:
            h = h[0]
        (z_t, mu, logvar), post = model.posterior(h_target, post)
        h_pred, pred = model.predictor(torch.cat([h, z_t, cond[i - 1]], 1), pred)
        x_pred = model.decoder(h_pred, skip)
        mse = mse + F.mse_loss(x_pred, x[i])
        kld = kld + (-0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())) / batch_size
    loss = mse + kld * beta
    loss.backward()
    for opt in optims:
        opt.step()
    return loss.item()


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
    ref_opts = [torch.optim.Adam(m.parameters(), lr=lr, betas=betas)
                for m in (ref.predictor, ref.posterior, ref.encoder, ref.decoder)]
    frames = torch.rand(args.batch, args.seq_len, 3, 64, 64)
    cond = torch.randn(args.batch, args.seq_len, 7)
    x_tm = list(frames.transpose(0, 1).contiguous())  # the reference's time-major batch
    cond_tm = list(cond.transpose(0, 1).contiguous())

    run = {"reference": lambda: reference_step(ref, ref_opts, x_tm, cond_tm, 1e-4),
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
