"""One training micro-batch on the device, with no host synchronisation.

Per micro-batch: forward, then one all-reduce (a collective on the device, not a host sync) of [loss, mse,
kld, non-finite flag, teacher forced] summed over ranks. A non-finite loss on any rank multiplies every rank's
loss by NaN before backward, so the accumulated gradients of the window are non-finite everywhere; at the
window's end the gradient norm is taken (and clipped when optim.grad_clip > 0), and the optimizer skips its
update on the device when the norm is not finite: fused Adam reads `found_inf` (the interface GradScaler uses
with fp16, which then skips by itself and keeps its scale when the cause was a non-finite loss). Running sums
stay on the device in float64 and are added in step order, so a resumed epoch continues them bit for bit;
`Meter.read` is the only host sync (every log_every optimizer steps and at the end of an epoch).
"""

from __future__ import annotations

import contextlib
import math

import torch
from accelerate import Accelerator

EPOCH_SUMS = ("loss", "mse", "kld", "batches")
"""Sums over the epoch's finite micro-batches of the rank-mean loss, mse and kld, and their count."""


class Meter:
    """Device-side values: the last micro-batch (summed over ranks), the epoch so far, skipped steps. Every
    update is in place on tensors made here, so a CUDA graph that captured a step updates these very tensors
    on every replay."""

    def __init__(self, device: torch.device, world: int, epoch_sums: list[float] | None = None) -> None:
        self.world = world
        self.epoch = torch.tensor(epoch_sums or [0.0] * len(EPOCH_SUMS), dtype=torch.float64, device=device)
        self.last = torch.zeros(5, dtype=torch.float64, device=device)
        self.window_bad = torch.zeros((), dtype=torch.bool, device=device)
        self.skipped = torch.zeros((), dtype=torch.float64, device=device)
        self.grad_norm = torch.zeros((), dtype=torch.float64, device=device)
        self._one = torch.ones(1, dtype=torch.float64, device=device)
        self._teacher_forced = {tf: torch.tensor(float(tf), device=device) for tf in (False, True)}

    def begin_epoch(self, epoch_sums: list[float] | None) -> None:
        """Start an epoch's sums (from a mid-epoch checkpoint's, or zeros), in place."""
        self.epoch.copy_(torch.tensor(epoch_sums or [0.0] * len(EPOCH_SUMS), dtype=torch.float64))

    def add(self, accelerator: Accelerator, out: dict[str, torch.Tensor], teacher_forcing: bool) -> torch.Tensor:
        """Record a micro-batch; returns the factor for its loss: 1, or NaN when some rank's loss is not finite."""
        loss = out["loss"].detach()
        not_finite = (loss - loss) != 0  # NaN for inf and NaN: one kernel fewer than ~isfinite
        local = torch.stack([loss, out["mse"].detach(), out["kld"].detach(), not_finite,
                             self._teacher_forced[teacher_forcing]]).double()
        self.last.copy_(accelerator.reduce(local, "sum") if self.world > 1 else local)
        ok = self.last[3] == 0
        means = self.last[:3] / self.world if self.world > 1 else self.last[:3]
        self.epoch += torch.where(ok, torch.cat([means, self._one]), 0.0)
        self.window_bad |= ~ok
        return torch.where(ok, 1.0, math.nan).to(loss.dtype)

    def close_window(self, grad_norm: torch.Tensor, scaled: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """End of an accumulation window: (whether the optimizer must skip it: a non-finite gradient norm,
        whether a loss in it was not finite). A skip counts as non-finite when the loss was not finite or,
        without an fp16 GradScaler (whose overflow skips are routine), when the gradients were not."""
        found, bad = (grad_norm - grad_norm) != 0, self.window_bad.clone()  # not finite
        self.skipped += bad if scaled else (bad | found)
        self.window_bad.zero_()
        self.grad_norm.copy_(grad_norm.detach())
        return found, bad

    def read(self) -> dict:
        """Host copy (the one sync): the last micro-batch's rank means, the epoch sums, steps skipped since the
        previous read."""
        values = torch.cat([self.last, self.epoch, self.skipped[None], self.grad_norm[None]]).tolist()
        self.skipped.zero_()  # in place: a captured graph keeps adding to this very memory
        loss, mse, kld, bad, tf = values[:5]
        return {"loss": loss / self.world, "mse": mse / self.world, "kld": kld / self.world, "finite": bad == 0,
                "teacher_forced": tf / self.world, "epoch_sums": values[5:5 + len(EPOCH_SUMS)],
                "skipped": int(values[-2]), "grad_norm": values[-1]}


def make_optimizer(model: torch.nn.Module, lr: float, betas: tuple[float, float], weight_decay: float,
                   device: torch.device, capturable: bool = False) -> torch.optim.Adam:
    """Adam, fused on CUDA and CPU (one kernel for all parameters, and on-device step skipping), else foreach;
    `capturable` (a CUDA graph's step): a tensor learning rate, filled in place by `set_learning_rate`."""
    fused = device.type in ("cuda", "cpu")
    return torch.optim.Adam(model.parameters(), lr=torch.tensor(lr, device=device) if capturable else lr,
                            betas=betas, weight_decay=weight_decay, fused=fused, foreach=None if fused else True,
                            capturable=capturable)


def set_learning_rate(optimizer, lr: float) -> None:
    """Every param group's learning rate; a tensor one (a captured step reads it) is filled in place."""
    for group in optimizer.param_groups:
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr


@contextlib.contextmanager
def scale_kept_if(scaler, keep: torch.Tensor):
    """A GradScaler's scale and growth tracker come out of the block as they went in where `keep` (a device
    bool) is true: a non-finite loss is not a loss-scale overflow, and halving the scale for each one would
    leave small fp16 gradients at zero for thousands of steps. Decided on the device, no host sync."""
    initialized = getattr(scaler, "_scale", None) is not None
    saved = (scaler._scale.clone(), scaler._growth_tracker.clone()) if initialized else None
    yield
    if saved is not None:
        scaler._scale.copy_(torch.where(keep, saved[0], scaler._scale))
        scaler._growth_tracker.copy_(torch.where(keep, saved[1], scaler._growth_tracker))


def _step_unless(accelerator: Accelerator, optimizer, found: torch.Tensor, loss_bad: torch.Tensor) -> None:
    inner = optimizer.optimizer  # the torch optimizer inside accelerate's wrapper
    if accelerator.scaler is not None:
        with scale_kept_if(accelerator.scaler, loss_bad):
            optimizer.step()  # the GradScaler found the non-finite gradients itself
    elif getattr(inner, "_step_supports_amp_scaling", False):  # fused: skips on the device
        inner.found_inf = found.float()
        optimizer.step()
        del inner.found_inf
    elif not bool(found):  # a host sync: only optimizers without a fused kernel get here
        optimizer.step()


def train_micro_batch(accelerator: Accelerator, model, optimizer, meter: Meter, frames: torch.Tensor,
                      cond: torch.Tensor, teacher_forcing: bool, beta: float, grad_clip: float) -> bool:
    """Forward and backward of one micro-batch; at the end of an accumulation window, clip and step. Returns
    whether this micro-batch closed a window (an optimizer step)."""
    with accelerator.accumulate(model):
        out = model(frames, cond, teacher_forcing, beta)
        accelerator.backward(out["loss"] * meter.add(accelerator, out, teacher_forcing))
        if not accelerator.sync_gradients:
            return False
        norm = accelerator.clip_grad_norm_(model.parameters(), grad_clip if grad_clip > 0 else math.inf)
        _step_unless(accelerator, optimizer, *meter.close_window(norm, accelerator.scaler is not None))
        optimizer.zero_grad(set_to_none=True)
        return True
