"""One protocol over a split, distributed: every rank scores its share, the per-video rows are gathered.

For each video the model sees the protocol's n_past context frames (and the conditioning of all frames) and
predicts n_future; each of the protocol's samples is scored per predicted frame, and each metric keeps its best
sample (`scoring.BatchScores`). Samples are folded into the batch (up to `max_rows` rows per model call) and
only running values are kept, so 100 samples of 28 frames cost no more memory than a few. Rows are gathered
from all ranks and averaged over the whole split in key order (`summary.summarize`). FVD features (when the
protocol has FVD and an I3D network is given) are summed per rank in float64 and merged over ranks.
"""

from __future__ import annotations

import contextlib
import hashlib

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object

from toolkit.eval.latent import posterior_rows, summarize_latent
from toolkit.eval.scoring import BatchScores
from toolkit.model.inference import folded
from toolkit.eval.summary import EvalResult, summarize

MAX_ROWS = 128
"""Rows (samples x videos) per generation call: enough to keep a CPU's convolutions efficient, and at 28
frames ~200 MB of float32 predictions."""


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


def sample_chunks(samples: int, videos: int, max_rows: int = MAX_ROWS) -> list[range]:
    """Sample indices per generation call: as many samples as fit `max_rows` rows with `videos` videos, an even
    number (the LPIPS diversity pairs samples 2k and 2k+1 within a call)."""
    size = max(1, max_rows // max(videos, 1))
    size = size - size % 2 if size > 1 else 1
    return [range(s, min(s + size, samples)) for s in range(0, samples, size)]


def generate_samples(model, past: torch.Tensor, cond: torch.Tensor, keys: list[str], seed: int, chunk: range,
                     n_future: int, dtype) -> torch.Tensor:
    """Samples `chunk` of every video at once: past [B, n_past, ...] -> predictions [S, B, n_future, C, H, W]
    float32; sample s of video KEY draws its latents from (seed, KEY, s)."""
    S, B = len(chunk), past.shape[0]
    noise = torch.cat([batch_noise(model, keys, seed, s, n_future) for s in chunk]).to(past.device)
    device = past.device.type
    with torch.autocast(device, dtype=dtype, enabled=dtype is not None), true_float32(dtype is None):
        preds = model.generate(past.repeat(S, 1, 1, 1, 1), cond.repeat(S, 1, 1), n_future, noise)
    return preds.float().view(S, B, *preds.shape[1:])


@torch.no_grad()  # not inference_mode: the model's cached zero states made here are used by training later
def evaluate(model: torch.nn.Module, loader, accelerator: Accelerator, protocol, seed: int = 0, keep: int = 0,
             precision: str = "no", lpips=None, fvd=None, progress=None) -> tuple[EvalResult, list[tuple]]:
    """Score `model` (unwrapped SVG; a copy with its BatchNorms folded generates, `model` itself is untouched)
    under `protocol` (a bound `protocols.Protocol`) on this rank's loader;
    returns the gathered result and, on each rank, up to `keep` (key, ground truth [T,C,H,W], the sample best
    by PSNR [n_future,C,H,W]) of its first videos.

    Sample s of a video uses `sequence_noise(seed, key, s)` and the model runs in `precision` (float32 by
    default, whatever the training used), so a checkpoint scores the same on any number of ranks and at any
    batch size, during training and in `cvae eval`. `lpips`: (pred, target) -> [B, T] or None; `fvd`: an
    `fvd_sets.FVDSets` or None; `progress`: called with the number of videos after each batch."""
    generator = folded(model)  # BatchNorm folded into the convolutions: the same function, one pass fewer each
    rows, latent, kept, dtype = [], [], [], PRECISIONS[precision]
    n_past, n_future = protocol.n_past, protocol.n_future
    for batch in loader:
        frames, cond = batch.to(accelerator.device)
        past, future = frames[:, :n_past], frames[:, n_past:n_past + n_future]
        scores = BatchScores(protocol, past, future, lpips)
        for chunk in sample_chunks(protocol.samples, len(batch.keys)):
            preds = generate_samples(generator, past, cond, batch.keys, seed, chunk, n_future, dtype)
            scores.add(preds)
            if fvd is not None:
                fvd.add_generated(past, preds, chunk)
        if fvd is not None:
            fvd.add_real(frames[:, :n_past + n_future])
        rows.extend(scores.rows(batch.keys))
        latent.extend(posterior_rows(generator, frames[:, :n_past + n_future], cond[:, :n_past + n_future],
                                     batch.keys))
        for b in range(min(keep - len(kept), len(batch.keys))):
            kept.append((batch.keys[b], frames[b, :n_past + n_future].cpu(), scores.best_frames[b].cpu()))
        if progress is not None:
            progress(len(batch.keys))
    if accelerator.num_processes > 1:
        rows, latent = gather_object(rows), gather_object(latent)
    keys = [r["key"] for r in rows]
    if len(set(keys)) != len(keys):
        raise RuntimeError("evaluation saw a sequence twice: the eval loader is not split correctly by rank")
    result = summarize(rows, protocol.samples)
    result.latent = summarize_latent(latent)
    if fvd is not None:
        result.fvd = fvd.result(accelerator)
    return result, kept


def broadcast_buffers(model: torch.nn.Module, accelerator: Accelerator) -> None:
    """Give every rank the main process's BatchNorm running statistics (what the checkpoint holds)."""
    if accelerator.num_processes > 1:
        for buffer in model.buffers():
            torch.distributed.broadcast(buffer, src=0)
