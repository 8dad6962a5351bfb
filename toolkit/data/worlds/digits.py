"""Stochastic moving digits (SM-MNIST, Denton & Fergus 2018): the unconditional embedded world (cond dim 0).

Two 28x28 digit glyphs move in a 64x64 frame with constant integer velocity. Whenever a digit hits a wall it
takes a new random velocity pointing away from that wall, so when and how it turns is known only after the
bounce: the future is stochastic. Grey levels (the digits combined by max) replicated to 3 channels.
"""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image, ImageDraw, ImageFont, features

SIZE = 64
DIGIT = 28
"""Glyph height and width in pixels."""
MAX_SPEED = 4
"""Largest velocity component, pixels per frame."""
NUM_DIGITS = 2


@functools.lru_cache(maxsize=1)
def digit_glyphs() -> np.ndarray:
    """uint8 [10, 28, 28] glyphs for 0-9: Pillow's default font when FreeType is available, else drawn shapes."""
    if features.check("freetype2"):
        try:
            return _font_glyphs()
        except (ImportError, OSError):  # a Pillow without a working FreeType
            pass
    return shape_glyphs()


def _font_glyphs() -> np.ndarray:
    font = ImageFont.load_default(size=32)  # digits about 23 x 27 px with the 2 px stroke
    glyphs = np.zeros((10, DIGIT, DIGIT), dtype=np.uint8)
    for digit in range(10):
        image = Image.new("L", (DIGIT, DIGIT), 0)
        ImageDraw.Draw(image).text((DIGIT / 2, DIGIT / 2), str(digit), fill=255, font=font, anchor="mm",
                                   stroke_width=2, stroke_fill=255)
        glyphs[digit] = np.asarray(image)
    return glyphs


def shape_glyphs() -> np.ndarray:
    """uint8 [10, 28, 28]: ten distinct drawn shapes standing in for the digits (the no-FreeType fallback)."""
    lo, hi, mid, w = 4, DIGIT - 5, DIGIT // 2, 3
    draws = [
        lambda d: d.ellipse((lo, lo, hi, hi), outline=255, width=w),
        lambda d: d.line((mid, lo, mid, hi), fill=255, width=w + 1),
        lambda d: d.polygon((mid, lo, hi, hi, lo, hi), outline=255, width=w),
        lambda d: d.rectangle((lo + 3, lo + 3, hi - 3, hi - 3), fill=255),
        lambda d: (d.line((mid, lo, mid, hi), fill=255, width=w), d.line((lo, mid, hi, mid), fill=255, width=w)),
        lambda d: (d.line((lo, lo, hi, hi), fill=255, width=w), d.line((lo, hi, hi, lo), fill=255, width=w)),
        lambda d: d.ellipse((lo + 3, lo + 3, hi - 3, hi - 3), fill=255),
        lambda d: d.polygon((mid, lo, hi, mid, mid, hi, lo, mid), outline=255, width=w),
        lambda d: (d.ellipse((lo + 4, lo, hi - 4, mid), outline=255, width=w),
                   d.ellipse((lo + 4, mid, hi - 4, hi), outline=255, width=w)),
        lambda d: [d.line((lo, y, hi, y), fill=255, width=w) for y in (lo + 2, mid, hi - 2)],
    ]
    glyphs = np.zeros((10, DIGIT, DIGIT), dtype=np.uint8)
    for digit, draw in enumerate(draws):
        image = Image.new("L", (DIGIT, DIGIT), 0)
        draw(ImageDraw.Draw(image))
        glyphs[digit] = np.asarray(image)
    return glyphs


def _velocity(rng: np.random.Generator, low: int = -MAX_SPEED, high: int = MAX_SPEED) -> int:
    return int(rng.integers(low, high + 1))


def _digit_path(rng: np.random.Generator, seq_len: int, future: np.random.Generator | None = None,
                n_past: int = 0) -> tuple[int, list[tuple[int, int]]]:
    """One digit: (glyph index, its top-left corner in each frame). A bounce in frame t >= n_past draws its new
    velocity from `future` when given (the hidden part of the future, resampled), else from `rng`."""
    limit = SIZE - DIGIT
    glyph = int(rng.integers(10))
    x, y = int(rng.integers(0, limit + 1)), int(rng.integers(0, limit + 1))
    dx, dy = 0, 0
    while dx == 0 and dy == 0:
        dx, dy = _velocity(rng), _velocity(rng)
    path = []
    for t in range(seq_len):
        r = future if future is not None and t >= n_past else rng
        if y < 0:  # bounce: a new random velocity pointing away from the wall
            y, dy, dx = 0, _velocity(r, low=1), _velocity(r)
        elif y > limit:
            y, dy, dx = limit, _velocity(r, high=-1), _velocity(r)
        if x < 0:
            x, dx, dy = 0, _velocity(r, low=1), _velocity(r)
        elif x > limit:
            x, dx, dy = limit, _velocity(r, high=-1), _velocity(r)
        path.append((x, y))
        x, y = x + dx, y + dy
    return glyph, path


def _draw(paths: list[tuple[int, list[tuple[int, int]]]], seq_len: int) -> np.ndarray:
    glyphs = digit_glyphs()
    frames = np.zeros((seq_len, SIZE, SIZE), dtype=np.uint8)
    for glyph, path in paths:
        for t, (x, y) in enumerate(path):
            window = frames[t, y:y + DIGIT, x:x + DIGIT]
            np.maximum(window, glyphs[glyph], out=window)
    return np.repeat(frames[..., None], 3, axis=-1)


def generate_shapes_sequence(seed: int, seq_len: int = 30, future: np.random.Generator | None = None,
                             n_past: int = 0) -> np.ndarray:
    """One sequence of two bouncing digits, uint8 [seq_len, 64, 64, 3]; the same seed gives the same frames.

    With `future`: the same sequence up to frame n_past - 1, then every bounce's velocity drawn from `future`
    instead (the true sequence's other draws, the second digit's start, kept): a resampled future."""
    rng = np.random.default_rng(seed)
    paths = []
    for _ in range(NUM_DIGITS):
        start = rng.bit_generator.state
        true = _digit_path(rng, seq_len)  # advances rng as the true sequence does
        if future is None:
            paths.append(true)
        else:
            replay = np.random.default_rng()
            replay.bit_generator.state = start
            paths.append(_digit_path(replay, seq_len, future, n_past))
    return _draw(paths, seq_len)
