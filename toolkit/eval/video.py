"""Prediction videos: panels (ground truth | prediction | samples ...) composed into GIF/MP4 frames and strips.

Every panel spans the whole window: a prediction panel shows the ground-truth context frames first. A green
border marks context frames and a red border predicted frames, as in SVG's figures.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from toolkit.fsutil import atomic_path

CONTEXT, PREDICTED = (40, 200, 40), (220, 40, 40)


def to_uint8(frames: torch.Tensor) -> np.ndarray:
    """float [T, C, H, W] in [0, 1] -> uint8 [T, H, W, 3]."""
    frames = frames.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8).cpu()
    if frames.shape[1] == 1:
        frames = frames.expand(-1, 3, -1, -1)
    return frames.permute(0, 2, 3, 1).numpy()


def with_context(context: torch.Tensor, predicted: torch.Tensor) -> torch.Tensor:
    """A prediction panel: the context frames followed by the predicted ones, [n_past + n_future, C, H, W]."""
    return torch.cat([context, predicted.to(context.dtype)], 0)


def compose(rows: list[list[torch.Tensor]], n_past: int, border: int = 2) -> np.ndarray:
    """rows[r][p] = panel p of row r, float [T, C, H, W] -> video uint8 [T, rows*(H+2b), panels*(W+2b), 3]."""
    videos = []
    for row in rows:
        panels = []
        for panel in row:
            frames = to_uint8(panel)
            t = frames.shape[0]
            colours = np.array([CONTEXT if i < n_past else PREDICTED for i in range(t)], np.uint8)
            framed = np.broadcast_to(colours[:, None, None, :], (t, frames.shape[1] + 2 * border,
                                                                 frames.shape[2] + 2 * border, 3)).copy()
            framed[:, border:border + frames.shape[1], border:border + frames.shape[2]] = frames
            panels.append(framed)
        videos.append(np.concatenate(panels, axis=2))
    return np.concatenate(videos, axis=1)


def save_gif(path: str | Path, video: np.ndarray, fps: float = 4.0) -> Path:
    """uint8 [T, H, W, 3] -> looping GIF, written atomically."""
    images = [Image.fromarray(frame) for frame in video]
    path = Path(path)
    with atomic_path(path) as tmp:
        images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    return path


def save_strip(path: str | Path, video: np.ndarray) -> Path:
    """uint8 [T, H, W, 3] -> one PNG with the T frames side by side (time runs left to right)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(np.concatenate(list(video), axis=1)).save(tmp, format="PNG")
    return path
