"""Drawing the robot-pushing world (see world.py): anti-aliased shapes from signed distance fields, in numpy.

Table point (x, y) is at pixel (CENTER + PIX_PER_UNIT * x, CENTER + PIX_PER_UNIT * y). The gripper is drawn
`Z_PIX * z` rows above its shadow and `1 + Z_SCALE * z` times larger, so its height is visible.
"""

from __future__ import annotations

import colorsys

import numpy as np
from PIL import Image

SIZE = 64
CENTER = (SIZE - 1) / 2
PIX_PER_UNIT = 28.0
Z_PIX = 8.0
"""Image rows the gripper rises above its shadow per unit of height."""
Z_SCALE = 0.6
"""Relative growth of the drawn gripper at z = 1 (it is closer to the camera)."""
_COORD = np.arange(SIZE, dtype=np.float32)


def table(rng: np.random.Generator) -> np.ndarray:
    """A table: a muted base colour times a smooth low-frequency texture and faint wood grain."""
    base = np.array(colorsys.hsv_to_rgb(rng.uniform(0.05, 0.15), rng.uniform(0.15, 0.4), rng.uniform(0.55, 0.8)),
                    dtype=np.float32)
    low = np.asarray(Image.fromarray(rng.standard_normal((5, 5)).astype(np.float32)).resize(
        (SIZE, SIZE), Image.Resampling.BICUBIC))
    grain = np.sin(_COORD[:, None] * rng.uniform(0.5, 0.9) + 2.0 * low + rng.uniform(0, 2 * np.pi))
    texture = 1.0 + 0.05 * low + 0.02 * grain + 0.01 * rng.standard_normal((SIZE, SIZE))
    return np.clip(base * texture[..., None], 0.0, 1.0).astype(np.float32)


def _window(xs: np.ndarray, ys: np.ndarray, margin: float) -> tuple[slice, slice]:
    """Pixel rows and columns covering the points (xs, ys) plus `margin`, clipped to the image."""
    x0, x1 = max(0, int(xs.min() - margin)), min(SIZE, int(xs.max() + margin) + 2)
    y0, y1 = max(0, int(ys.min() - margin)), min(SIZE, int(ys.max() + margin) + 2)
    return slice(y0, max(y0, y1)), slice(x0, max(x0, x1))


def _box_sdf(ax: np.ndarray, ay: np.ndarray, hx: np.ndarray | float, hy: np.ndarray | float,
             rc: np.ndarray | float) -> np.ndarray:
    """Signed pixel distance [T, h, w] to axis-aligned rounded boxes (half sizes hx, hy, corner radius rc).

    `ax` [T, 1, w] and `ay` [T, h, 1] are the pixels' absolute offsets from the box centre (the distance
    field is separable up to one broadcast); with `rc == hx == hy` the box is a disc.
    """
    qx, qy = ax - (hx - rc), ay - (hy - rc)
    ox, oy = np.maximum(qx, 0.0), np.maximum(qy, 0.0)
    d = np.add(ox * ox, oy * oy)
    np.sqrt(d, out=d)
    d += np.maximum(np.minimum(qx, 0.0) - rc, np.minimum(qy, 0.0) - rc)
    return d


def _coverage(d: np.ndarray, width: float | np.ndarray = 1.0) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] from a signed distance: a smooth step over `width` pixels (reuses `d`)."""
    a = np.subtract(0.5, d if np.isscalar(width) and width == 1.0 else np.divide(d, width, out=d), out=d)
    np.clip(a, 0.0, 1.0, out=a)
    a2 = a * a
    a *= -2.0
    a += 3.0
    a *= a2
    return a


def _over(img: np.ndarray, alpha: np.ndarray, color: np.ndarray | tuple[float, float, float]) -> None:
    """Composite `color` over channel-first `img` [3, T, h, w] in place, with coverage `alpha` [T, h, w].

    `color` is an RGB triple or a per-pixel [3, T, h, w] array.
    """
    color = np.asarray(color, dtype=np.float32)
    diff = (color[:, None, None, None] if color.ndim == 1 else color) - img
    diff *= alpha
    img += diff


def render(scene, objects: np.ndarray, eef: np.ndarray, grip: np.ndarray) -> np.ndarray:
    """Frames uint8 [T, 64, 64, 3] of a `world.Scene` for object centres [T, K, 2], gripper positions [T, 3]
    and gripper states [T].

    Works channel-first ([3, T, H, W], so a coverage map broadcasts over the colours) and draws every shape
    only inside the window its positions over the whole sequence cover.
    """
    img = np.empty((3, len(eef), SIZE, SIZE), dtype=np.float32)
    img[:] = scene.background.transpose(2, 0, 1)[:, None]
    for i, color in enumerate(scene.colors):
        r = float(scene.radii[i]) * PIX_PER_UNIT
        cx, cy = (CENTER + PIX_PER_UNIT * objects[:, i, j].reshape(-1, 1, 1) for j in (0, 1))
        rows, cols = _window(cx, cy, r + 2.0)
        d = _box_sdf(np.abs(_COORD[cols] - cx), np.abs(_COORD[rows, None] - cy), r, r, r * float(scene.corners[i]))
        shade = np.clip(d, -0.6 * r, 0.0)  # darker towards the rim
        shade *= -0.5 / r
        shade += 0.7
        _over(img[:, :, rows, cols], _coverage(d), color[:, None, None, None] * shade)
    x, y, z = (np.asarray(eef[:, i], dtype=np.float32).reshape(-1, 1, 1) for i in range(3))
    gx, ty = CENTER + PIX_PER_UNIT * x, CENTER + PIX_PER_UNIT * y
    gy, s = ty - Z_PIX * z, 1.0 + Z_SCALE * z
    rs = 5.0 * (1.0 + 0.4 * z)  # shadow on the table: larger, softer and lighter when high
    rows, cols = _window(gx, ty, 11.0)
    shadow = _box_sdf(np.abs(_COORD[cols] - gx), np.abs(_COORD[rows, None] - ty), rs, rs * 0.8, rs * 0.8)
    shadow = _coverage(shadow, 1.0 + 3.0 * z)
    shadow *= -0.45 * (1.0 - 0.5 * z)
    shadow += 1.0
    img[:, :, rows, cols] *= shadow
    bx, by = CENTER + 0.3 * (gx - CENTER), np.full_like(gy, -30.0)  # arm: a capsule up to a base above
    rows, cols = _window(np.concatenate([gx, bx]), np.concatenate([gy, by]), 5.0)
    ax, ay, px, py = bx - gx, by - gy, _COORD[cols] - gx, _COORD[rows, None] - gy
    h = np.clip((px * ax + py * ay) / (ax * ax + ay * ay), 0.0, 1.0)
    dx, dy = px - ax * h, py - ay * h
    _over(img[:, :, rows, cols], _coverage(np.sqrt(dx * dx + dy * dy) - 2.2 * s), (0.32, 0.32, 0.36))
    rows, cols = _window(gx, gy, 13.0)
    ax, ay = np.abs(_COORD[cols] - gx), _COORD[rows, None] - gy
    opened = np.asarray(grip, dtype=np.float32).reshape(-1, 1, 1) < 0
    fx = np.abs(ax - (3.0 + 1.8 * opened) * s)  # fingers: one mirrored box, wider apart when open
    _over(img[:, :, rows, cols], _coverage(_box_sdf(fx, np.abs(ay - 3.0 * s), 1.3 * s, 3.0 * s, s)),
          (0.15, 0.15, 0.17))
    body = _box_sdf(ax, np.abs(ay + s), 4.5 * s, 3.0 * s, 1.5 * s)
    inner = body + 1.0
    _over(img[:, :, rows, cols], _coverage(body), (0.2, 0.2, 0.22))  # dark outline, then the metal face
    _over(img[:, :, rows, cols], _coverage(inner), (0.8, 0.8, 0.82))
    img *= 255.0
    img += 0.5
    np.clip(img, 0.0, 255.0, out=img)
    return np.ascontiguousarray(img.astype(np.uint8).transpose(1, 2, 3, 0))
