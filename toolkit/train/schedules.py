"""Teacher forcing ratio and KL weight schedules: pure functions of the epoch (or global step).

The KL coefficient of the loss is `beta * kl_weight(...)` (`ScheduleConfig.beta` at the top of the ramp);
`schedule_values` combines both schedules for the trainer.
"""

from __future__ import annotations

import hashlib
import math

from toolkit.config import CHOICES, OptimConfig, ScheduleConfig
from toolkit.errors import ConfigError

KL_MODES = CHOICES["schedule.kl_anneal"]


def teacher_forcing_ratio(epoch: int, tfr: float, start_decay_epoch: int, decay_step: float,
                          lower_bound: float) -> float:
    """Teacher forcing ratio used during (0-based) `epoch`.

    The lab's loop applies `if epoch >= start_decay_epoch: tfr = max(lower_bound, tfr - decay_step)` at the END
    of each epoch, so during epoch e the ratio is
    `max(lower_bound, tfr - decay_step * max(0, e - start_decay_epoch))`: never below `lower_bound`. If the
    initial `tfr` is already below `lower_bound` it is kept as is (the loop would raise it to the bound).
    """
    if tfr <= lower_bound:
        return float(tfr)
    return float(max(lower_bound, tfr - decay_step * max(0, epoch - start_decay_epoch)))


def kl_weight(t: float, total: float, mode: str, n_cycle: int = 1, ratio: float = 1.0) -> float:
    """KL annealing weight in [0, 1] at time t of `total`; the loss uses `beta * kl_weight(...)`.

    t is the epoch (total = epochs) or, for per-step granularity, the global step
    (total = epochs * steps_per_epoch).
    - `none`: 1.0.
    - `monotonic`: min(1, t / (ratio * total)); reaches 1 at t = ratio * total and stays there.
    - `cyclical` (Fu et al. 2019, "Cyclical Annealing Schedule"): period = total / n_cycle,
      min(1, (t mod period) / (ratio * period)); each cycle ramps 0 -> 1 over its first `ratio` and stays at 1.
      Equals the paper's `frange_cycle_linear(total, 0, 1, n_cycle, ratio)[t]` when the period is an integer.
    """
    if mode == "none":
        return 1.0
    if total <= 0 or ratio <= 0:
        raise ConfigError(f"kl_weight: total and ratio must be > 0, got total={total}, ratio={ratio}")
    if mode == "monotonic":
        return float(min(1.0, max(t, 0) / (ratio * total)))
    if mode == "cyclical":
        if n_cycle < 1:
            raise ConfigError(f"kl_weight: n_cycle must be >= 1, got {n_cycle}")
        period = total / n_cycle
        return float(min(1.0, math.fmod(max(t, 0), period) / (ratio * period)))
    raise ConfigError(f"kl_weight: mode must be one of {', '.join(KL_MODES)}, got {mode!r}")


def schedule_values(cfg: ScheduleConfig, epoch: int, step_in_epoch: int, steps_per_epoch: int,
                    epochs: int) -> tuple[float, float]:
    """(teacher forcing ratio, KL coefficient beta * kl_weight) for a step of the (0-based) `epoch`.

    The KL weight is evaluated per epoch (t = epoch, total = epochs) or, with `cfg.kl_per_step`, per optimizer
    step (t = epoch * steps_per_epoch + step_in_epoch, total = epochs * steps_per_epoch).
    """
    tfr = teacher_forcing_ratio(epoch, cfg.tfr, cfg.tfr_start_decay_epoch, cfg.tfr_decay_step, cfg.tfr_lower_bound)
    if cfg.kl_per_step:
        t, total = epoch * steps_per_epoch + step_in_epoch, epochs * steps_per_epoch
    else:
        t, total = epoch, epochs
    w = kl_weight(t, total, cfg.kl_anneal, cfg.kl_anneal_cycle, cfg.kl_anneal_ratio)
    return tfr, cfg.beta * w


def learning_rate(cfg: OptimConfig, step: int, total_steps: int) -> float:
    """The learning rate of optimizer step `step` (0-based) of `total_steps`: a linear warm-up over
    `warmup_steps`, then constant or a cosine from lr down to lr * lr_final at the last step."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return cfg.lr
    span = max(total_steps - 1 - cfg.warmup_steps, 1)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.lr * (cfg.lr_final + (1 - cfg.lr_final) * 0.5 * (1 + math.cos(math.pi * progress)))


def unit_draw(*parts) -> float:
    """A number in [0, 1) that depends only on `parts` (sha256 of their repr): the same on every rank, in
    every run and on every machine."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:7], "little") / 2.0 ** 56


def teacher_forcing_on(seed: int, step: int, tfr: float) -> bool:
    """Whether optimizer step `step` (0-based; all its micro-batches) feeds ground-truth frames: one decision
    per global step from (seed, step), so every rank decides alike and a resumed run decides as before."""
    return unit_draw("teacher_forcing", seed, step) < tfr
