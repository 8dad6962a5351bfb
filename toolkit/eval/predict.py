"""`cvae predict CHECKPOINT --input SEQ_DIR|SHARD --out out.gif`: predict one sequence and render it.

The input is a sequence folder in the BAIR layout (frames + csv files) or a shard (`.tar`; the first sequence,
or `--key`). The model sees the first n_past frames and the actions of the whole window and predicts n_future
frames: the prediction (latent at the prior's mean) and `--samples` random samples (`--sort`: best first by
PSNR, so the best and the worst sample sit at the two ends). Output: a GIF (or MP4 with the optional `mp4` extra)
showing ground truth | prediction | samples side by side, and a PNG strip with one row per panel and time running
left to right (the context frames framed green, predicted frames red).
"""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import torch

from toolkit.train.checkpoint import load_model
from toolkit.data.shards import codec
from toolkit.data.sources.folders import read_sequence_dir
from toolkit.errors import DataError, ToolkitError
from toolkit.eval.evaluate import batch_noise
from toolkit.eval.metrics import psnr
from toolkit.fsutil import atomic_path
from toolkit.eval.video import compose, save_gif, save_strip, with_context


def read_input(path: Path, key: str | None = None) -> tuple[torch.Tensor, torch.Tensor, str]:
    """(frames float [T, 3, H, W] in [0, 1], cond [T, D], key) from a sequence folder or a shard."""
    if path.is_dir():
        seq = read_sequence_dir(path, key=path.name)
        frames = torch.from_numpy(seq.frames).permute(0, 3, 1, 2)
        return frames.float() / 255, torch.from_numpy(seq.cond), seq.key
    if not path.is_file():
        raise ToolkitError(f"{path}: no such sequence folder or shard")
    try:
        samples = codec.tar_samples(path.read_bytes())
    except tarfile.TarError as e:
        raise DataError(f"{path}: not a readable shard ({e})") from None
    if key is not None:
        samples = {k: v for k, v in samples.items() if k == key}
    if not samples:
        raise DataError(f"{path}: " + (f"no sequence '{key}'" if key else "no sequences"))
    k, entries = next(iter(samples.items()))
    encoding = next((e.split(".")[1] for e in entries if e.startswith("frames.")), None)
    if encoding not in codec.ENCODINGS or codec.COND_ENTRY not in entries:
        raise DataError(f"{path}: sample '{k}' has entries {sorted(entries)}, expected frames.png|npy and cond.npy")
    try:
        cond = codec.decode_cond(entries[codec.COND_ENTRY])
        frames = codec.decode_frames(entries[f"frames.{encoding}"], encoding, cond.shape[0])
    except ValueError as e:
        raise DataError(f"{path}: sample '{k}': {e}") from None
    return frames.float() / 255, cond, k


def save_video(path: Path, video: np.ndarray, fps: float) -> Path:
    """GIF (Pillow) or MP4 (imageio-ffmpeg, the optional `mp4` extra), chosen by the file extension."""
    if path.suffix.lower() == ".gif":
        return save_gif(path, video, fps)
    if path.suffix.lower() != ".mp4":
        raise ToolkitError(f"--out {path}: use a .gif or .mp4 file name")
    try:
        import imageio.v2 as imageio
    except ImportError:
        raise ToolkitError("MP4 output needs imageio-ffmpeg: pip install -e '.[mp4]' (or write a .gif)") from None
    with atomic_path(path) as tmp:
        imageio.mimwrite(tmp, list(video), format="FFMPEG", fps=fps, codec="libx264", macro_block_size=1,
                         output_params=["-pix_fmt", "yuv420p"])
    return path


def predict(checkpoint: str | Path, input_path: str | Path, out: str | Path, samples: int = 3,
            n_future: int | None = None, key: str | None = None, seed: int = 0, fps: float = 4.0,
            strip: str | Path | None = None, sort: bool = False) -> dict:
    """Predict one sequence; writes the video and the strip, returns their paths, the frame count and each
    shown sample's index and PSNR (dB, mean over the predicted frames, the protocols' per-channel PSNR);
    `sort`: samples shown best first, so the last panel is the worst."""
    if samples < 0 or (n_future is not None and n_future < 1):
        raise ToolkitError("--samples must be >= 0 and --n-future >= 1")
    model, cfg, meta = load_model(checkpoint)
    n_past, cond_dim = meta["model_args"]["n_past"], meta["model_args"]["cond_dim"]
    frames, cond, seq_key = read_input(Path(input_path), key)
    n_future = n_future or min(cfg.data.n_future, frames.shape[0] - n_past)
    if n_past + n_future > frames.shape[0]:
        raise ToolkitError(f"{input_path}: {frames.shape[0]} frames, the model needs {n_past} + {n_future}")
    if cond_dim and cond.shape[1] != cond_dim:
        raise ToolkitError(f"{checkpoint} conditions on {cond_dim} values per frame, {input_path} has {cond.shape[1]}")
    window = frames[None, :n_past + n_future]
    cond = cond[None, :n_past + n_future] if cond_dim else cond.new_zeros(1, n_past + n_future, 0)
    panels = [window[0], with_context(window[0, :n_past], model.generate(window[:, :n_past], cond, n_future)[0])]
    drawn = []
    for s in range(samples):  # the latents `cvae eval --seed` draws for this sequence
        pred = model.generate(window[:, :n_past], cond, n_future, batch_noise(model, [seq_key], seed, s, n_future))
        drawn.append((s, psnr(pred, window[:, n_past:]).mean().item(), pred[0]))
    if sort:
        drawn.sort(key=lambda d: -d[1])
    panels += [with_context(window[0, :n_past], pred) for _, _, pred in drawn]
    out = Path(out)
    video = save_video(out, compose([panels], n_past), fps)
    strip_path = save_strip(Path(strip) if strip else out.with_suffix(".png"), compose([[p] for p in panels], n_past))
    shown = ", ".join(f"{s} ({value:.2f} dB)" for s, value, _ in drawn)
    print(f"{seq_key}: {n_past} context + {n_future} predicted frames -> {video} (ground truth | prediction | "
          f"{samples} sample(s)) and {strip_path}" + (f"\nsamples{' best first' if sort else ''}: {shown}"
                                                      if drawn else ""))
    return {"video": str(video), "strip": str(strip_path), "frames": n_past + n_future, "key": seq_key,
            "samples": [{"sample": s, "psnr": value} for s, value, _ in drawn]}
