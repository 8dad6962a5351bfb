"""Frames of an mp4 at given timestamps (LeRobot's videos), decoded with PyAV front to back and resized.

LeRobot stores the episodes of a camera one after another in shared mp4 files and finds frame t of an episode as
the decoded frame shown closest to `from_timestamp + timestamp[t]`, failing when none is within its tolerance
(`tolerance_s`, 1e-4 s by default: `lerobot_dataset.py`, `video_utils.decode_video_frames`). `VideoCursor` does
the same in one forward pass over the file: episodes in file order cost one decode of the file in all.
Frames are turned into the model's square size by `resize_frame` (`lerobot_meta.RESIZE` modes).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image

from toolkit.data.sources.lerobot_meta import Resize
from toolkit.errors import DataError

TOLERANCE_S = 1e-4
"""How far (s) a decoded frame's time may be from the time asked for: lerobot's default `tolerance_s`."""


def resize_frame(image: Image.Image, size: int, mode: Resize) -> np.ndarray:
    """An RGB image as uint8 [size, size, 3]: centre square (`crop`) or whole frame (`stretch`), resampled
    bilinearly (Pillow's filter widens with the scale factor, so downscaling averages, it does not alias)."""
    w, h = image.size
    box = (0, 0, w, h)
    if mode == "crop":
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        box = (left, top, left + side, top + side)
    out = image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR, box=box)
    return np.asarray(out, dtype=np.uint8)


class VideoCursor:
    """Decodes one video file front to back and hands out the frames nearest to increasing timestamps."""

    def __init__(self, path: Path) -> None:
        import av

        self.path, self.av = Path(path), av
        try:
            self.container = av.open(str(self.path))
        except (av.error.FFmpegError, OSError) as e:
            raise DataError(f"{self.path}: cannot open the video ({e})") from None
        if not self.container.streams.video:
            self.container.close()
            raise DataError(f"{self.path}: no video stream")
        self.frames = self.container.decode(video=0)
        self.current = None
        self.time = -math.inf
        """Presentation time (s) of `current`, the last frame decoded."""

    def _advance(self) -> bool:
        try:
            self.current = next(self.frames)
        except StopIteration:
            return False
        except self.av.error.FFmpegError as e:
            raise DataError(f"{self.path}: corrupt video after {self.time:.4f} s ({e})") from None
        if self.current.time is None:
            raise DataError(f"{self.path}: a frame after {self.time:.4f} s has no timestamp")
        self.time = float(self.current.time)
        return True

    def can_reach(self, t: float) -> bool:
        """Whether time `t` is not behind the cursor (else the file must be opened again)."""
        return self.current is None or t >= self.time - TOLERANCE_S

    def frames_at(self, times: np.ndarray, size: int, mode: Resize, what: str) -> np.ndarray:
        """The frames shown at `times` (s, increasing), as uint8 [len(times), size, size, 3]; `what` names them
        in errors (e.g. 'episode 3')."""
        out = np.empty((len(times), size, size, 3), dtype=np.uint8)
        for i, t in enumerate(times):
            while self.current is None or self.time < t - TOLERANCE_S:
                if not self._advance():
                    raise DataError(f"{self.path}: the video ends at {self.time:.4f} s, before frame {i} of {what} "
                                    f"at {t:.4f} s")
            if self.time > t + TOLERANCE_S:
                raise DataError(f"{self.path}: no frame within {TOLERANCE_S} s of {t:.4f} s (frame {i} of {what}; "
                                f"the next one is at {self.time:.4f} s)")
            out[i] = resize_frame(self.current.to_image(), size, mode)
        return out

    def close(self) -> None:
        self.container.close()
