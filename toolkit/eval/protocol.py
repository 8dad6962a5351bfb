"""The evaluation protocol of the reference lab, distributed: every rank scores its share, results are gathered.

For each sequence, the model sees the first n_past frames (and the conditioning of all frames) and predicts the
next n_future; PSNR (per channel, data range 1, averaged over channels) and SSIM are computed per predicted
frame. With N samples per sequence, best-of-N keeps the best sample per sequence (by PSNR for PSNR and by SSIM
for SSIM, as in SVG's evaluation) and mean-of-N averages them. The copy-last-frame baseline repeats the last
context frame. Per-sequence rows are gathered from all ranks and averaged over the whole set (not the last
batch); the result lists per-frame curves and their means.
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import asdict, dataclass, field

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object

from toolkit.eval import metrics

KEYS = ("psnr", "ssim", "psnr_mean", "ssim_mean", "baseline_psnr", "baseline_ssim", "motion_psnr",
        "baseline_motion_psnr")
"""motion_psnr: PSNR over the pixels that move (`metrics.motion_mask`: the ground truth differs from the last
context frame by more than `metrics.MOTION_THRESHOLD`) of the sample best by PSNR; copy-last-frame's is
baseline_motion_psnr. Frames where nothing moves are left out of its averages."""


@dataclass
class EvalResult:
    count: int
    """Sequences evaluated (over all ranks)."""
    samples: int
    """Samples per sequence (best-of-N / mean-of-N)."""
    per_frame: dict[str, list[float]]
    """Each metric in KEYS per predicted frame, averaged over sequences."""
    mean: dict[str, float] = field(default_factory=dict)
    """Each metric in KEYS averaged over frames and sequences."""
    keys: list[str] = field(default_factory=list)
    """The sequences evaluated, sorted."""
    per_sequence: dict[str, list[float]] = field(default_factory=dict)
    """Best-of-N PSNR, best-of-N SSIM and copy-last PSNR of each sequence (in `keys` order), averaged over its
    predicted frames: for paired comparisons of two models on the same sequences."""

    def to_json(self) -> dict:
        return asdict(self)


def sequence_noise(seed: int, key: str, sample: int, steps: int, z_dim: int) -> torch.Tensor:
    """The standard normal noise [steps, z_dim] (float32, CPU) of sample `sample` of sequence `key`: seeded from
    (seed, key, sample) alone, so a sequence gets the same latents on any number of ranks, at any batch size
    and on any device."""
    digest = hashlib.sha256(f"{seed}/{key}/{sample}".encode()).digest()
    generator = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)
    return torch.randn(steps, z_dim, generator=generator)


def batch_noise(model, keys: list[str], seed: int, sample: int, n_future: int) -> torch.Tensor:
    """`sequence_noise` of each key, stacked: [B, steps, z_dim] for `model.generate`."""
    steps = model.noise_steps(n_future)
    return torch.stack([sequence_noise(seed, key, sample, steps, model.cfg.z_dim) for key in keys])


PRECISIONS = {"no": None, "bf16": torch.bfloat16, "fp16": torch.float16}
"""Evaluation precisions: float32 (`no`, the default everywhere) or an autocast dtype."""


@contextlib.contextmanager
def true_float32(enabled: bool = True):
    """cuDNN convolutions and cuBLAS products in IEEE float32 rather than TF32 (10-bit mantissas, on by default
    for cuDNN on Ampere and newer), so float32 scores on a GPU agree with a CPU's to float32 rounding."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    if enabled:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader, accelerator: Accelerator, n_past: int, n_future: int,
             samples: int = 1, seed: int = 0, keep: int = 0, precision: str = "no") -> tuple[EvalResult, list[tuple]]:
    """Score `model` (unwrapped SVG) on this rank's loader; returns the gathered result and, on each rank, up
    to `keep` (key, ground truth [T,C,H,W], best prediction [n_future,C,H,W]) of its first sequences.

    Sample s of a sequence uses `sequence_noise(seed, key, s)`, and the model runs in `precision` (float32 by
    default, whatever the training used), so a checkpoint scores the same on any number of ranks and at any
    batch size, during training and in `cvae eval`."""
    was_training = model.training
    model.eval()
    rows, kept = [], []
    dtype = PRECISIONS[precision]
    for batch in loader:
        frames, cond = batch.to(accelerator.device)
        past, future = frames[:, :n_past], frames[:, n_past:n_past + n_future]
        with torch.autocast(accelerator.device.type, dtype=dtype, enabled=dtype is not None), \
                true_float32(dtype is None):
            preds = torch.stack([model.generate(past, cond, n_future, batch_noise(model, batch.keys, seed, s,
                                                                                  n_future).to(past.device)).float()
                                 for s in range(samples)])  # [N, B, n_future, C, H, W]
        psnr = torch.stack([metrics.psnr(p, future) for p in preds])  # [N, B, n_future]
        ssim = torch.stack([metrics.ssim(p, future) for p in preds])
        best_psnr, best_index = metrics.best_of_n(psnr)
        best_ssim, _ = metrics.best_of_n(ssim)
        baseline = metrics.copy_last_frame(past, n_future)
        moving = metrics.motion_mask(past[:, -1], future)
        best = preds[best_index, torch.arange(preds.shape[1], device=best_index.device)]  # by PSNR, [B, ...]
        values = {"psnr": best_psnr, "ssim": best_ssim, "psnr_mean": psnr.mean(0), "ssim_mean": ssim.mean(0),
                  "baseline_psnr": metrics.psnr(baseline, future), "baseline_ssim": metrics.ssim(baseline, future),
                  "motion_psnr": metrics.masked_psnr(best, future, moving),
                  "baseline_motion_psnr": metrics.masked_psnr(baseline, future, moving)}
        values = {k: v.double().cpu() for k, v in values.items()}
        for b, key in enumerate(batch.keys):
            rows.append({"key": key, **{k: v[b].tolist() for k, v in values.items()}})
            if len(kept) < keep:
                kept.append((key, frames[b, :n_past + n_future].cpu(), best[b].cpu()))
    if was_training:
        model.train()
    rows = gather_object(rows) if accelerator.num_processes > 1 else rows
    keys = [r["key"] for r in rows]
    if len(set(keys)) != len(keys):
        raise RuntimeError("evaluation saw a sequence twice: the eval loader is not split correctly by rank")
    return summarize(rows, samples), kept


def summarize(rows: list[dict], samples: int) -> EvalResult:
    """Average per-sequence rows (each metric a per-frame list) over all sequences, in key order (so the sums,
    and the result, do not depend on how the sequences were split across ranks)."""
    if not rows:
        return EvalResult(count=0, samples=samples, per_frame={k: [] for k in KEYS},
                          mean={k: float("nan") for k in KEYS})
    rows = sorted(rows, key=lambda r: r["key"])
    per_frame = {k: torch.tensor([r[k] for r in rows], dtype=torch.float64).nanmean(0).tolist() for k in KEYS}
    mean = {k: float(torch.tensor([r[k] for r in rows], dtype=torch.float64).nanmean()) for k in KEYS}
    per_sequence = {k: torch.tensor([r[k] for r in rows], dtype=torch.float64).mean(1).tolist()
                    for k in ("psnr", "ssim", "baseline_psnr")}
    return EvalResult(count=len(rows), samples=samples, per_frame=per_frame, mean=mean, keys=[r["key"] for r in rows],
                      per_sequence=per_sequence)


def broadcast_buffers(model: torch.nn.Module, accelerator: Accelerator) -> None:
    """Give every rank the main process's BatchNorm running statistics (what the checkpoint holds)."""
    if accelerator.num_processes > 1:
        for buffer in model.buffers():
            torch.distributed.broadcast(buffer, src=0)
