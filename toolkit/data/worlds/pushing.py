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

from toolkit.data.worlds.render import render, table  # noqa: F401 (render: public API)

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
FRICTION = (0.15, 0.6)
"""Range of the per-object friction (fraction of the sliding velocity lost per frame), uniform."""


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


def make_scene(rng: np.random.Generator) -> Scene:
    """Sample a table, 2-4 non-overlapping objects and a gripper start position clear of them."""
    background = table(rng)
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
                 np.array(colors, dtype=np.float32), rng.uniform(*FRICTION, k).astype(np.float32), eef0,
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


def draw_kicks(rng: np.random.Generator, steps: int, k: int) -> np.ndarray:
    """The random part of the pushes: complex [steps, K], the factor turning and scaling each object's kick at
    each step (the only draws `rollout`'s rng makes)."""
    jitter = np.exp(1j * JITTER_ANGLE * rng.standard_normal((steps, k)))
    jitter *= np.maximum(0.0, 1.0 + 0.3 * rng.standard_normal((steps, k)))
    return CARRY / SUBSTEPS * jitter


def _simulate(scene: Scene, eef: np.ndarray, grip: np.ndarray, kicks: np.ndarray) -> np.ndarray:
    """Object centres float32 [T, K, 2] given the gripper path and the kicks (`draw_kicks`).

    Points and velocities are complex numbers x + iy; a push's kick is turned and scaled by the kick factor.
    """
    steps, k = len(eef), len(scene.radii)
    kicks = kicks.tolist()
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


def rollout(scene: Scene, actions: np.ndarray, rng: np.random.Generator | None = None,
            kicks: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Play `actions` [T, 4] in `scene`: frames uint8 [T, 64, 64, 3] and gripper positions eef float32 [T, 3].

    `rng` drives only what the actions do not explain (the jitter of pushed objects, `draw_kicks`); or the
    kicks are given.
    """
    actions = np.asarray(actions, dtype=np.float32)
    if actions.ndim != 2 or actions.shape[1] != 4 or len(actions) == 0:
        raise ValueError(f"actions must be [T >= 1, 4], got shape {actions.shape}")
    eef = np.empty((len(actions), 3), dtype=np.float32)
    eef[0] = scene.eef0
    for t in range(1, len(actions)):
        eef[t] = np.clip(eef[t - 1] + GAIN * actions[t - 1, :3], WORKSPACE_LO, WORKSPACE_HI)
    grip = np.concatenate([[scene.gripper0], actions[:-1, 3]]).astype(np.float32)
    if kicks is None:
        kicks = draw_kicks(rng, len(actions), len(scene.radii))
    objects = _simulate(scene, eef, grip, kicks)
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
