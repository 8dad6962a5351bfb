"""Procedural robot-pushing world: a 64x64 RGB analogue of BAIR robot pushing (the embedded default dataset).

A fixed camera looks at a textured table with 2-4 coloured objects (discs and rounded squares). A gripper on an
arm moves under random, piecewise-smooth velocity commands and pushes the objects it touches while low.

Conventions
-----------
- World units: the table spans x, y in [-1, 1] (x to the right, y down the image); the gripper height z is in
  [0, 1] (0 = touching the table). The gripper is confined to the workspace `WORKSPACE_LO..WORKSPACE_HI`.
- `eef[t] = (x, y, z)` is the gripper position shown in frame t.
- `actions[t] = (dx, dy, dz, gripper)` is the command applied between frame t and frame t+1:
  `eef[t+1] = clip(eef[t] + GAIN * actions[t, :3], WORKSPACE_LO, WORKSPACE_HI)`; frame t+1 shows the gripper
  state `actions[t, 3]` (+1 closed, -1 open; frame 0 shows `scene.gripper0`). The last action acts after the
  last frame. dx, dy, dz lie in [-1, 1], so the gripper moves at most `GAIN` per frame (3.6 px in x and in y).
- Rendering: table point (x, y) is at pixel (CENTER + PIX_PER_UNIT * x, CENTER + PIX_PER_UNIT * y). The gripper
  is drawn `Z_PIX * z` rows above its shadow and `1 + Z_SCALE * z` times larger, so its height is visible.
- Pushing: while the gripper is below `Z_CONTACT` an object it overlaps is moved out along the contact normal
  and keeps a sliding velocity that decays with a per-object friction (a scene property that is not part of
  the conditioning); each contact also gets a random direction/size jitter drawn from the rollout's noise rng.
  Future frames therefore depend on the actions, but not only on them.
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

SIZE = 64
CENTER = (SIZE - 1) / 2
PIX_PER_UNIT = 28.0
Z_PIX = 8.0
"""Image rows the gripper rises above its shadow per unit of height."""
Z_SCALE = 0.6
"""Relative growth of the drawn gripper at z = 1 (it is closer to the camera)."""
GAIN = np.array([0.13, 0.13, 0.15], dtype=np.float32)
"""World units moved per unit of action (dx, dy, dz) per frame."""
WORKSPACE_LO = np.array([-0.85, -0.85, 0.0], dtype=np.float32)
WORKSPACE_HI = np.array([0.85, 0.85, 1.0], dtype=np.float32)
Z_CONTACT = 0.2
"""The gripper pushes objects only while its height is below this."""
GRIP_RADIUS = 0.16
"""Contact radius of the closed gripper (world units); the open gripper reaches `GRIP_OPEN_EXTRA` further."""
GRIP_OPEN_EXTRA = 0.05
SUBSTEPS = 3
CARRY = 0.5
"""Fraction of a push's displacement an object keeps as sliding velocity."""
JITTER_ANGLE = 0.35
"""Standard deviation (radians) of the random turn given to a pushed object's sliding direction."""
MAX_SLIDE = 0.15
"""Largest sliding speed of an object, world units per frame."""
_COORD = np.arange(SIZE, dtype=np.float32)


@dataclass
class Scene:
    """The static part of a sequence: table, objects (world units) and the gripper's start."""

    background: np.ndarray
    """float32 [64, 64, 3] in [0, 1]."""
    positions: np.ndarray
    """float32 [K, 2] object centres (x, y)."""
    radii: np.ndarray
    """float32 [K] contact radii."""
    corners: np.ndarray
    """float32 [K] corner radius as a fraction of the radius: 1 = disc, smaller = rounded square."""
    colors: np.ndarray
    """float32 [K, 3] RGB in [0, 1]."""
    frictions: np.ndarray
    """float32 [K] fraction of the sliding velocity lost per frame (hidden from the model)."""
    eef0: np.ndarray
    """float32 [3] gripper position in frame 0."""
    gripper0: float
    """Gripper state shown in frame 0 (+1 closed, -1 open)."""


def _table(rng: np.random.Generator) -> np.ndarray:
    """A table: a muted base colour times a smooth low-frequency texture and faint wood grain."""
    base = np.array(colorsys.hsv_to_rgb(rng.uniform(0.05, 0.15), rng.uniform(0.15, 0.4), rng.uniform(0.55, 0.8)),
                    dtype=np.float32)
    low = np.asarray(Image.fromarray(rng.standard_normal((5, 5)).astype(np.float32)).resize(
        (SIZE, SIZE), Image.Resampling.BICUBIC))
    grain = np.sin(_COORD[:, None] * rng.uniform(0.5, 0.9) + 2.0 * low + rng.uniform(0, 2 * np.pi))
    texture = 1.0 + 0.05 * low + 0.02 * grain + 0.01 * rng.standard_normal((SIZE, SIZE))
    return np.clip(base * texture[..., None], 0.0, 1.0).astype(np.float32)


def make_scene(rng: np.random.Generator) -> Scene:
    """Sample a table, 2-4 non-overlapping objects and a gripper start position clear of them."""
    background = _table(rng)
    k = int(rng.integers(2, 5))
    radii = rng.uniform(0.17, 0.3, k)
    corners = np.where(rng.random(k) < 0.5, 1.0, rng.uniform(0.3, 0.6, k))
    hues = (rng.random() + np.arange(k) / k + rng.uniform(-0.06, 0.06, k)) % 1.0
    colors = [colorsys.hsv_to_rgb(h, rng.uniform(0.6, 0.95), rng.uniform(0.6, 0.95)) for h in hues]
    eef0 = np.array([rng.uniform(-0.7, 0.7), rng.uniform(-0.7, 0.7), rng.uniform(0.3, 0.8)], dtype=np.float32)
    positions = np.zeros((k, 2))
    for i in range(k):
        for _ in range(100):
            p = rng.uniform(-0.9 + radii[i], 0.9 - radii[i], 2)
            clear_of_objects = all(np.hypot(*(p - positions[j])) > radii[i] + radii[j] + 0.08 for j in range(i))
            if clear_of_objects and np.hypot(*(p - eef0[:2])) > radii[i] + GRIP_RADIUS + 0.15:
                break
        positions[i] = p
    return Scene(background, positions.astype(np.float32), radii.astype(np.float32), corners.astype(np.float32),
                 np.array(colors, dtype=np.float32), rng.uniform(0.15, 0.6, k).astype(np.float32), eef0,
                 float(rng.choice([-1.0, 1.0])))


def sample_actions(rng: np.random.Generator, seq_len: int, start: np.ndarray | None = None) -> np.ndarray:
    """BAIR-like random pushing commands, float32 [seq_len, 4] = (dx, dy, dz, gripper).

    Every 2-6 frames a new velocity target (random direction and speed) and height target (low, near the
    table, 65% of the time) is drawn; the command eases towards it, so motion is smooth but its future is not
    predictable from the past. The gripper channel flips with probability 0.08 per frame. `start` (the
    gripper's first position, default the workspace centre at mid height) lets the policy steer off the walls.
    """
    pos = [0.0, 0.0, 0.5] if start is None else [float(v) for v in start]
    gain = [float(g) for g in GAIN]
    lo, hi = [float(v) for v in WORKSPACE_LO], [float(v) for v in WORKSPACE_HI]
    noise = rng.standard_normal((seq_len, 3)) * 0.05
    flips = rng.random(seq_len) < 0.08
    grip = float(rng.choice([-1.0, 1.0]))
    actions = np.empty((seq_len, 4), dtype=np.float32)
    vel, target, z_target, left = [0.0, 0.0], [0.0, 0.0], 0.0, 0
    for t in range(seq_len):
        if left == 0:
            left = int(rng.integers(2, 7))
            angle, speed = rng.uniform(0.0, 2 * math.pi), rng.uniform(0.4, 1.0)
            target = [speed * math.cos(angle), speed * math.sin(angle)]
            z_target = rng.uniform(0.0, 0.08) if rng.random() < 0.65 else rng.uniform(0.3, 0.9)
        left -= 1
        for i in (0, 1):  # turn back before running into a wall
            ahead = pos[i] + 3 * gain[i] * target[i]
            if (ahead > 0.9 * hi[i] and target[i] > 0) or (ahead < 0.9 * lo[i] and target[i] < 0):
                target[i] = -target[i]
            vel[i] = min(1.0, max(-1.0, vel[i] + 0.6 * (target[i] - vel[i]) + noise[t, i]))
        dz = min(1.0, max(-1.0, 0.5 * (z_target - pos[2]) / gain[2] + noise[t, 2]))
        grip = -grip if flips[t] else grip
        actions[t] = (vel[0], vel[1], dz, grip)
        for i, d in enumerate((vel[0], vel[1], dz)):
            pos[i] = min(hi[i], max(lo[i], pos[i] + gain[i] * d))
    return actions


def _simulate(scene: Scene, eef: np.ndarray, grip: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Object centres float32 [T, K, 2] given the gripper path; rng drives only the contact jitter.

    Points and velocities are complex numbers x + iy; a push's kick is turned and scaled by random noise.
    """
    steps, k = len(eef), len(scene.radii)
    jitter = np.exp(1j * JITTER_ANGLE * rng.standard_normal((steps, k)))
    jitter *= np.maximum(0.0, 1.0 + 0.3 * rng.standard_normal((steps, k)))
    kicks = (CARRY / SUBSTEPS * jitter).tolist()
    pos, vel = [complex(x, y) for x, y in scene.positions.tolist()], [0j] * k
    radii, keep = scene.radii.tolist(), (1.0 - scene.frictions).tolist()
    path = [(complex(x, y), z) for x, y, z in eef.tolist()]
    out = np.empty((steps, k), dtype=np.complex128)
    out[0] = pos
    for t in range(1, steps):
        pos = [p + v for p, v in zip(pos, vel)]  # slide, then lose a friction share of the velocity
        vel = [v * c for v, c in zip(vel, keep)]
        reach = GRIP_RADIUS + (GRIP_OPEN_EXTRA if grip[t] < 0 else 0.0)
        (g0, z0), (g1, z1) = path[t - 1], path[t]
        for s in range(1, SUBSTEPS + 1):  # sweep the gripper along its path so it cannot tunnel
            a = s / SUBSTEPS
            if z0 + a * (z1 - z0) >= Z_CONTACT:
                continue
            g = g0 + a * (g1 - g0)
            for i in range(k):
                dist = abs(pos[i] - g)
                overlap = radii[i] + reach - dist
                if overlap > 0.0:
                    normal = (pos[i] - g) / dist if dist > 1e-9 else 1.0 + 0j
                    pos[i] += normal * overlap
                    vel[i] += normal * overlap * kicks[t][i]
        _separate(pos, vel, radii)
        for i in range(k):
            if abs(vel[i]) > MAX_SLIDE:
                vel[i] *= MAX_SLIDE / abs(vel[i])
            (x, y), (vx, vy), lim = (pos[i].real, pos[i].imag), (vel[i].real, vel[i].imag), 1.0 - radii[i]
            if abs(x) > lim:  # stay on the table, bounce off its edges
                x, vx = math.copysign(lim, x), -0.5 * vx
            if abs(y) > lim:
                y, vy = math.copysign(lim, y), -0.5 * vy
            pos[i], vel[i] = complex(x, y), complex(vx, vy)
        out[t] = pos
    return np.stack([out.real, out.imag], axis=-1).astype(np.float32)


def _separate(pos: list[complex], vel: list[complex], radii: list[float]) -> None:
    """Push overlapping objects apart (half each) and pass a little momentum along the contact normal."""
    for i in range(len(pos)):
        for j in range(i + 1, len(pos)):
            dist = abs(pos[j] - pos[i])
            overlap = radii[i] + radii[j] - dist
            if overlap > 0.0:
                shift = 0.5 * overlap * ((pos[j] - pos[i]) / dist if dist > 1e-9 else 1.0 + 0j)
                pos[i], pos[j] = pos[i] - shift, pos[j] + shift
                vel[i], vel[j] = vel[i] - 0.3 * shift, vel[j] + 0.3 * shift


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


def render(scene: Scene, objects: np.ndarray, eef: np.ndarray, grip: np.ndarray) -> np.ndarray:
    """Frames uint8 [T, 64, 64, 3] for object centres [T, K, 2], gripper positions [T, 3] and states [T].

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


def rollout(scene: Scene, actions: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Play `actions` [T, 4] in `scene`: frames uint8 [T, 64, 64, 3] and gripper positions eef float32 [T, 3].

    `rng` drives only what the actions do not explain (the jitter of pushed objects).
    """
    actions = np.asarray(actions, dtype=np.float32)
    if actions.ndim != 2 or actions.shape[1] != 4 or len(actions) == 0:
        raise ValueError(f"actions must be [T >= 1, 4], got shape {actions.shape}")
    eef = np.empty((len(actions), 3), dtype=np.float32)
    eef[0] = scene.eef0
    for t in range(1, len(actions)):
        eef[t] = np.clip(eef[t - 1] + GAIN * actions[t - 1, :3], WORKSPACE_LO, WORKSPACE_HI)
    grip = np.concatenate([[scene.gripper0], actions[:-1, 3]]).astype(np.float32)
    objects = _simulate(scene, eef, grip, rng)
    return render(scene, objects, eef, grip), eef


def generate_pushing_sequence(seed: int, seq_len: int = 30) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One sequence: frames uint8 [T, 64, 64, 3], actions float32 [T, 4], eef float32 [T, 3].

    Scene, actions and noise come from independent children of `np.random.SeedSequence(seed)`.
    """
    scene_seq, action_seq, noise_seq = np.random.SeedSequence(seed).spawn(3)
    scene = make_scene(np.random.default_rng(scene_seq))
    actions = sample_actions(np.random.default_rng(action_seq), seq_len, start=scene.eef0)
    frames, eef = rollout(scene, actions, np.random.default_rng(noise_seq))
    return frames, actions, eef
