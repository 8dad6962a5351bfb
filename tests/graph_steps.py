"""What the CUDA tests of whole-step graphs share (tests/test_cuda.py, tests/ddp_graph_worker.py): batches whose
loss moves far more than the tolerances from one step to the next, a run of eager or graphed steps with the
learning rate at 0 until both graphs are captured, a non-finite batch among the replays with a meter read
before it, and the comparison of a graphed run with an eager one."""

from __future__ import annotations

import numpy as np
import torch

from toolkit.config import ModelConfig
from toolkit.model import SVG
from toolkit.train.graphs import WARMUP
from toolkit.train.step import set_learning_rate

BATCH, SEQ_LEN, COND_DIM, Z_DIM = 4, 12, 7, 4
NOISE_SHAPE = (SEQ_LEN - 1, BATCH, Z_DIM)
CAPTURED = 2 * WARMUP + 2
"""Steps 0..CAPTURED-1: both modes' eager warm-ups, then each mode's capture and first replay (teacher forcing on
even steps: its capture is step 2*WARMUP, the free-running one's 2*WARMUP+1)."""
STEPS = CAPTURED + 20
READ_AT, NAN_AT = CAPTURED + 2, CAPTURED + 6
"""A meter read among the replays (the host read that once swapped the skip counter away from the graph's
memory), then a batch of NaN frames: its step must be skipped and counted."""
LR = 2e-3

SAME_WEIGHTS_RTOL = 1e-3
"""Up to the first replay of each graph the learning rate is 0, so both runs hold the initial weights: the same
kernels on the same inputs, a loss (a float32 mean of ~10^5 bf16 products) off by float rounding at most,
where a stale input batch is off by over 50% (`LEVELS`)."""
LOSS_RTOL = 2e-2
"""After that, training: some CUDA backward kernels (upsampling's, convolutions' weight gradients) add with
atomics, so two runs differ by rounding that Adam grows step by step."""
MOVEMENT_RTOL = 0.1
"""How far the weights moved from their initial values (L2 over all parameters), graphed against eager. Adam
makes every weight move by about lr per step whatever its gradient's size, so the distance moved is the same
in two runs that took the same steps (measured on a CPU with 3% noise on every gradient: within 0.6%), while
the weights themselves do not agree elementwise (biases before a BatchNorm have no true gradient: they follow
rounding noise). A graph that applied no update, or read a learning rate frozen at the warm-up's 0, moves 0."""

LEVELS = (0.0, 0.5, 0.2, 0.45, 1.0, 0.6, 0.3)
"""Background level of batch i (i mod 7), with a 16x16 square of 1 (on a dark background) or 0 moving across
it: the distance from the untrained decoder's mid-grey output sets the loss, so consecutive batches' losses
differ by 50% or more (the tests check it on the eager run)."""


def structured_batch(i: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch i: frames [BATCH, SEQ_LEN, 3, 64, 64] in [0, 1] as `LEVELS` says, cond [BATCH, SEQ_LEN, COND_DIM]
    (the square's velocity, then noise)."""
    g = torch.Generator().manual_seed(i)
    level = LEVELS[i % len(LEVELS)]
    frames = torch.full((BATCH, SEQ_LEN, 3, 64, 64), level)
    start, velocity = torch.randint(0, 48, (BATCH, 2), generator=g), torch.randint(-3, 4, (BATCH, 2), generator=g)
    for b in range(BATCH):
        for t in range(SEQ_LEN):
            row, col = ((start[b] + velocity[b] * t) % 48).tolist()
            frames[b, t, :, row:row + 16, col:col + 16] = float(level < 0.5)
    cond = torch.cat([velocity.float().div(3)[:, None].expand(BATCH, SEQ_LEN, 2),
                      torch.randn(BATCH, SEQ_LEN, COND_DIM - 2, generator=g)], 2)
    return frames.to(device), cond.to(device)


def tiny_svg(decoder_cond: str = "none") -> SVG:
    """The same small SVG (float32, channels_last) on every call."""
    torch.manual_seed(0)
    model = SVG(ModelConfig(width=0.125, g_dim=16, z_dim=Z_DIM, rnn_size=32, decoder_cond=decoder_cond),
                cond_dim=COND_DIM, n_past=2)
    return model.to(memory_format=torch.channels_last)


def run_steps(step, optimizer, meter, device: torch.device) -> dict:
    """STEPS calls of `step(frames, cond, teacher_forcing, beta)`: the loss of each (meter.last, NaN at NAN_AT),
    the skipped steps the meter reported, and the weights at the end (float64 CPU copies)."""
    losses, skipped = [], 0
    for i in range(STEPS):
        set_learning_rate(optimizer, 0.0 if i < CAPTURED else LR)
        frames, cond = structured_batch(i, device)
        if i == NAN_AT:
            frames = frames * float("nan")
        torch.cuda.manual_seed(i)  # the posterior's noise: drawn alike by the eager and the graphed step
        step(frames, cond, i % 2 == 0, 1e-3)
        losses.append(float(meter.last[0]))
        if i in (READ_AT, STEPS - 1):
            skipped += meter.read()["skipped"]
    params = [p.detach().double().cpu() for group in optimizer.param_groups for p in group["params"]]
    return {"losses": np.array(losses), "skipped": skipped, "params": params}


def moved(params: list[torch.Tensor], initial: list[torch.Tensor]) -> float:
    """L2 distance of the weights from their initial values, over all parameters."""
    return float(torch.cat([(p - p0).flatten() for p, p0 in zip(params, initial)]).norm())


def assert_graphed_trains_as_eager(eager: dict, graphed: dict, initial: list[torch.Tensor]) -> None:
    """The comparison, with the tolerances above; prints the figures a GPU check reports."""
    a, b = eager["losses"], graphed["losses"]
    finite = np.arange(STEPS) != NAN_AT
    change = np.abs(a[1:] / a[:-1] - 1)[finite[1:] & finite[:-1]]
    gap = np.abs(b / a - 1)
    moves = moved(eager["params"], initial), moved(graphed["params"], initial)
    print(f"smallest loss change between consecutive batches {change.min():.2f}; graphed vs eager, relative: "
          f"{gap[:CAPTURED].max():.1e} with the same weights, {np.nanmax(gap[CAPTURED:]):.1e} training; weights "
          f"moved {moves[0]:.4f} eager, {moves[1]:.4f} graphed; skipped {eager['skipped']} / {graphed['skipped']}")
    assert change.min() > 10 * LOSS_RTOL  # the batches can tell a stale input from the right one
    assert np.allclose(b[:CAPTURED], a[:CAPTURED], rtol=SAME_WEIGHTS_RTOL, atol=0)
    assert np.allclose(b[CAPTURED:], a[CAPTURED:], rtol=LOSS_RTOL, atol=0, equal_nan=True)
    assert np.isnan(a[NAN_AT]) and np.isnan(b[NAN_AT]) and np.isfinite(b[finite]).all()
    assert eager["skipped"] == graphed["skipped"] == 1  # the NaN batch, counted after the earlier read
    assert all(bool(torch.isfinite(p).all()) for p in graphed["params"])  # the skipped step touched nothing
    assert moves[0] > 0 and abs(moves[1] / moves[0] - 1) < MOVEMENT_RTOL
