"""SVG (Denton & Fergus 2018) as one module: VGG64 encoder/decoder, frame predictor, posterior, optional prior.

Notation: frames x_0..x_{T-1}; step i (1 <= i <= T-1) predicts x_i from the input frame x_{i-1}, the latent z_i
and the conditioning row cond_{i-1} (actions[i-1] takes frame i-1 to frame i). The predictor sees
cat(h_{i-1}, z_i, cond_{i-1}) where h = enc(frame). Decoder skips come from the input frame while it is a context
frame (i <= n_past - 1, as edenton/svg's `i < n_past`) and then, per `model.skip_from`, from x_{n_past-2} (the
reference code's choice), from the last context frame x_{n_past-1} (the paper's wording) or from the input frame
of every step (`previous`, the reference's --last_frame_skip).

Everything whose inputs are known runs once over all time steps (time-major tensors [T, B, ...], a step's rows
one contiguous block): the encoder over all T frames, the posterior over all targets (it only ever reads
ground-truth frames), and with teacher forcing the prior, the predictor (one multi-layer LSTM call each) and the
decoder over all T-1 steps. Without teacher forcing the steps whose input is a prediction run one at a time,
with the same parameters. Training-mode BatchNorm normalizes each time step over its B sequences
(`model.bn_stats: step`), exactly as the reference's per-step calls, or over all frames of a call (`batch`).
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import torch
from torch import nn
from torch.func import functional_call
from torch.nn.modules.batchnorm import _BatchNorm

from toolkit.config import CHOICES, ModelConfig
from toolkit.errors import ConfigError
from toolkit.model.lstm import GaussianLSTM, LSTM
from toolkit.model.vgg64 import Decoder, Encoder, init_weights, rows


def _at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """float16/bfloat16 -> float32; float32 and float64 unchanged."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor, prior_mu: torch.Tensor | None = None,
                  prior_logvar: torch.Tensor | None = None, batch_dim: int = 0) -> torch.Tensor:
    """KL(q || p) summed over every element and divided by the batch size (dim `batch_dim`), in (at least)
    float32 with autocast off.

    With no prior given p = N(0, I): -0.5 * sum(1 + logvar - mu^2 - exp(logvar)); otherwise the Gaussian-Gaussian
    KL log(s2/s1) + (s1^2 + (mu1 - mu2)^2) / (2 s2^2) - 1/2, as the reference's `kl_criterion`.
    """
    with torch.autocast(device_type=mu.device.type, enabled=False):
        mu, logvar = _at_least_float32(mu), _at_least_float32(logvar)
        if prior_mu is None:
            return (1 + logvar - mu.pow(2) - logvar.exp()).sum() * (-0.5 / mu.shape[batch_dim])
        pmu, plogvar = _at_least_float32(prior_mu), _at_least_float32(prior_logvar)
        kl = 0.5 * (plogvar - logvar) + (logvar.exp() + (mu - pmu).pow(2)) / (2 * plogvar.exp()) - 0.5
        return kl.sum() / mu.shape[batch_dim]


def _per_step_calls(model: nn.Module, steps: int):
    """`call(name, s, *args, **kwargs)`: the module `name` of model (encoder, decoder, predictor, prior) called
    with the s-th of `steps` sets of its parameters, one per free-running step: views of one expand per
    parameter, so the backward sums each parameter's `steps` gradients in one reduction (a stack and a sum)
    instead of adding them one at a time (two kernels per parameter instead of `steps`). Under autocast the
    parameters that autocast would cast (all but BatchNorm's) are cast once before the expand: autocast caches
    its casts of parameters, not of views."""
    modules = {n: getattr(model, n) for n in ("encoder", "decoder", "predictor", "prior")
               if getattr(model, n) is not None}
    device = next(model.parameters()).device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None
    views = {}
    for n, m in modules.items():
        norms = {f"{name}.{p}" for name, mod in m.named_modules() if isinstance(mod, _BatchNorm)
                 for p, _ in mod.named_parameters(recurse=False)}
        views[n] = {name: (p if dtype is None or name in norms else p.to(dtype)).expand(steps, *p.shape).unbind(0)
                    for name, p in m.named_parameters()}

    def call(name: str, s: int, *args, **kwargs):
        module = modules[name]
        if getattr(module, "_compiled_call_impl", None) is not None:  # swapped parameters would recompile it
            return module(*args, **kwargs)
        return functional_call(module, {k: v[s] for k, v in views[name].items()}, args, kwargs)
    return call


class Encoded(NamedTuple):
    """A batch encoded time-major: frames x [T, B, C, H, W], h [T, B, g_dim], the encoder's skip maps (each
    [T*B, c, s, s], time-major rows) and cond [T, B, D] in h's dtype."""
    x: torch.Tensor
    h: torch.Tensor
    skips: list[torch.Tensor]
    cond: torch.Tensor


class SVG(nn.Module):
    """SVG-FP (`cfg.prior == "fixed"`) or SVG-LP (`"learned"`) with per-frame conditioning of size `cond_dim`."""

    def __init__(self, cfg: ModelConfig, cond_dim: int, n_past: int, channels: int = 3) -> None:
        super().__init__()
        for key in ("prior", "skip_from", "bn_stats", "decoder_cond"):
            choices = CHOICES[f"model.{key}"]
            if getattr(cfg, key) not in choices:
                raise ConfigError(f"model: 'model.{key}' must be one of {', '.join(choices)}, got "
                                  f"{getattr(cfg, key)!r}")
        if n_past < 1 or cond_dim < 0:
            raise ConfigError(f"model: n_past must be >= 1 and cond_dim >= 0, got {n_past} and {cond_dim}")
        if n_past == 1 and cfg.skip_from == "reference":
            raise ConfigError("model: skip_from 'reference' (skips from x_{n_past-2}) needs n_past >= 2")
        self.cfg, self.cond_dim, self.n_past, self.channels = cfg, cond_dim, n_past, channels
        self.encoder = Encoder(cfg.g_dim, channels, cfg.width)
        rows = {"none": 0, "step": 1, "step_and_skip": 2}[cfg.decoder_cond]
        self.decoder = Decoder(cfg.g_dim, channels, cfg.width, rows * cond_dim, rows > 0)
        self.predictor = LSTM(cfg.g_dim + cfg.z_dim + cond_dim, cfg.g_dim, cfg.rnn_size, cfg.predictor_layers,
                              batch_norm=cfg.predictor_bn)
        self.posterior = GaussianLSTM(cfg.g_dim, cfg.z_dim, cfg.rnn_size, cfg.posterior_layers)
        self.prior = (GaussianLSTM(cfg.g_dim, cfg.z_dim, cfg.rnn_size, cfg.prior_layers)
                      if cfg.prior == "learned" else None)
        self.apply(init_weights)

    def param_count(self, trainable_only: bool = True) -> int:
        """Number of (trainable) parameters."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def skip_source(self, i: int) -> int:
        """Index of the frame whose encoder skips the decoder uses at step i (see the module docstring)."""
        if self.cfg.skip_from == "previous" or i < self.n_past:
            return i - 1
        return self.n_past - 1 if self.cfg.skip_from == "last_context" else self.n_past - 2

    def forward(self, frames: torch.Tensor, cond: torch.Tensor, teacher_forcing: bool = True,
                beta: float | torch.Tensor = 1.0, noise: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The training loss of one batch: `teacher_forced_loss` or `free_running_loss` (one decision per batch,
        made by the caller)."""
        loss = self.teacher_forced_loss if teacher_forcing else self.free_running_loss
        return loss(frames, cond, beta, noise)

    def loss_noise(self, frames: torch.Tensor) -> torch.Tensor:
        """Standard normal noise of the posterior for a batch frames [B, T, ...]: [T-1, B, z_dim] float32, drawn
        at once from the default generator of frames' device (row i-1 for step i)."""
        B, T = frames.shape[:2]
        return torch.randn(T - 1, B, self.cfg.z_dim, device=frames.device)

    def teacher_forced_loss(self, frames: torch.Tensor, cond: torch.Tensor, beta: float | torch.Tensor = 1.0,
                            noise: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Loss of a batch whose inputs are the ground-truth frames: frames [B, T, C, H, W] in [0, 1], cond
        [B, T, D] (D may be 0), noise [T-1, B, z_dim] (None: `loss_noise`). Every module runs once over all steps.

        Returns {"loss", "mse", "kld"} (0-dim). As in the reference training loop, `mse` is the SUM over the
        T-1 steps of the per-step pixel mean squared error (nn.MSELoss) and `kld` the SUM over steps of the KL
        summed over z dims and batch divided by the batch size; loss = mse + beta * kld. Divide by T-1 for
        per-frame figures. The KL is computed in float32 with autocast disabled.
        """
        enc = self._encode(frames, cond)
        z, mu, logvar = self._posterior(enc, noise)
        prior = self.prior(enc.h[:-1], sample=False)[0][1:] if self.prior is not None else None
        h_pred, _ = self.predictor(torch.cat([enc.h[:-1], z, enc.cond[:-1]], 2))
        x_pred = self._decode_steps(h_pred, enc.skips, enc.cond, range(1, frames.shape[1]))
        return self._loss(x_pred, enc, mu, logvar, prior, beta)

    def free_running_loss(self, frames: torch.Tensor, cond: torch.Tensor, beta: float | torch.Tensor = 1.0,
                          noise: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Loss of a batch whose inputs after the context are the model's own (non-detached) previous
        predictions; arguments and result as `teacher_forced_loss`. The encoder (of the targets) and the
        posterior run once over all steps, the context steps (ground-truth inputs) in one call each; every later
        step encodes the previous prediction and steps the prior, the predictor and the decoder once."""
        B, T = frames.shape[:2]
        k = min(self.n_past, T - 1)  # steps 1..k have ground-truth inputs: one call each, with parameter set 0
        call = _per_step_calls(self, T - k)
        enc = self._encode(frames, cond, partial(call, "encoder", 0))
        z, mu, logvar = self._posterior(enc, noise)
        prior_stats, prior_state = [], None
        if self.prior is not None:
            (_, pmu, plogvar), prior_state = call("prior", 0, enc.h[:k], sample=False)
            prior_stats.append((pmu, plogvar))
        h_pred, pred_state = call("predictor", 0, torch.cat([enc.h[:k], z[:k], enc.cond[:k]], 2))
        preds = [self._decode_steps(h_pred, enc.skips, enc.cond, range(1, k + 1), partial(call, "decoder", 0))]
        x_prev = preds[0].unbind(0)[-1]  # unbind, not select: one stack in the backward
        preds[0] = preds[0].flatten(0, 1)  # 4-D: a 5-D cat would come out NCHW whatever its inputs' format
        fixed: dict[int, list[tuple[torch.Tensor, ...]]] = {}  # skips of a ground-truth frame, one view per step
        for s, (i, z_i) in enumerate(zip(range(k + 1, T), z.unbind(0)[k:]), start=1):
            h_in, skips_in = call("encoder", s, x_prev)
            if self.prior is not None:
                (_, pmu, plogvar), prior_state = call("prior", s, h_in[None], prior_state, sample=False)
                prior_stats.append((pmu, plogvar))
            h_pred, pred_state = call("predictor", s, torch.cat([h_in, z_i, enc.cond[i - 1]], 1)[None], pred_state)
            j = self.skip_source(i)
            if j == i - 1:
                skips = skips_in
            else:
                if j not in fixed:
                    fixed[j] = [rows(m, j * B, (j + 1) * B)[None].expand(T - 1 - k, B, *m.shape[1:]).unbind(0)
                                for m in enc.skips]
                skips = [v[s - 1] for v in fixed[j]]
            x_prev = call("decoder", s, h_pred.view(B, -1), skips, cond=self.decoder_rows(enc.cond, [i]))
            preds.append(x_prev)
        prior = tuple(torch.cat(p) for p in zip(*prior_stats)) if prior_stats else None
        return self._loss(torch.cat(preds).view(T - 1, B, *x_prev.shape[1:]), enc, mu, logvar, prior, beta)

    def _encode(self, frames: torch.Tensor, cond: torch.Tensor, encoder=None) -> Encoded:
        """All T frames in one call of `encoder` (the module's own by default; BatchNorm statistics per time step
        with `bn_stats: step`)."""
        B, T, C, H, W = frames.shape
        if T < 2 or cond.shape[:2] != (B, T) or cond.shape[2] != self.cond_dim:
            raise ValueError(f"SVG: need frames [B, T>=2, C, H, W] and cond [B, T, {self.cond_dim}], "
                             f"got {tuple(frames.shape)} and {tuple(cond.shape)}")
        if self.encoder.c1[0][0].weight.is_contiguous(memory_format=torch.channels_last):
            # time-major in one copy, in the model's memory format: the loss's targets then match the predictions'
            x = frames.permute(1, 0, 3, 4, 2).reshape(T * B, H, W, C).permute(0, 3, 1, 2)
        else:
            x = frames.transpose(0, 1).reshape(T * B, C, H, W)
        groups = T if self.cfg.bn_stats == "step" else 1
        h, skips = (encoder or self.encoder)(x, groups=groups)
        return Encoded(x.view(T, B, C, H, W), h.view(T, B, -1), skips, cond.transpose(0, 1).to(h.dtype))

    def _posterior(self, enc: Encoded, noise: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        """q(z_i | x_1..i) for every step in one call: (z, mu, logvar), each [T-1, B, z_dim]."""
        noise = self.loss_noise(enc.x.transpose(0, 1)) if noise is None else noise
        if noise.shape != (enc.h.shape[0] - 1, enc.h.shape[1], self.cfg.z_dim):
            raise ValueError(f"SVG: need noise [T-1, B, {self.cfg.z_dim}], got {tuple(noise.shape)}")
        return self.posterior(enc.h[1:], eps=noise)[0]

    def decoder_rows(self, cond: torch.Tensor, steps: list[int] | range) -> torch.Tensor | None:
        """The decoder's conditioning (`model.decoder_cond`) of consecutive steps, from time-major cond [T, B, D]:
        [S*B, D] (`step`: row i-1 for step i), [S*B, 2D] (`step_and_skip`: and row `skip_source(i)`), step-major,
        or None."""
        if self.cfg.decoder_cond == "none":
            return None
        if list(steps) != list(range(steps[0], steps[-1] + 1)):
            raise ValueError(f"SVG.decoder_rows: steps must be consecutive, got {list(steps)}")
        rows = cond[steps[0] - 1:steps[-1]]
        if self.cfg.decoder_cond == "step_and_skip":
            # a stack of row views, not an index list: a list index is copied to the device with a host sync,
            # which a CUDA graph's capture forbids
            rows = torch.cat([rows, torch.stack([cond[self.skip_source(i)] for i in steps])], 2)
        return rows.flatten(0, 1)

    def _decode_steps(self, h_pred: torch.Tensor, skips_all: list[torch.Tensor], cond: torch.Tensor, steps: range,
                      decoder=None) -> torch.Tensor:
        """Decode h_pred [S, B, g_dim] (steps `steps`, in order; cond [T, B, D], row i-1 for step i) in one call of
        `decoder` (the module's own by default) -> [S, B, C, H, W].

        Skips come from frames `skip_source(i)` of skips_all (time-major rows); when several steps share a
        skip frame, only the distinct frames are passed, with how many consecutive steps each serves."""
        S, B = h_pred.shape[:2]
        idx = [self.skip_source(i) for i in steps]
        frames = sorted(set(idx))  # idx never decreases and its frames are consecutive: one slice of rows
        skips = [rows(s, frames[0] * B, (frames[-1] + 1) * B) for s in skips_all]
        repeats = None if len(frames) == S else [idx.count(j) for j in frames]
        groups = S if self.cfg.bn_stats == "step" else 1
        x = (decoder or self.decoder)(h_pred.reshape(S * B, -1), skips, repeats, groups=groups,
                                      cond=self.decoder_rows(cond, steps))
        return x.view(S, B, *x.shape[1:])

    def _loss(self, x_pred: torch.Tensor, enc: Encoded, mu: torch.Tensor, logvar: torch.Tensor,
              prior: tuple[torch.Tensor, torch.Tensor] | None, beta: float | torch.Tensor) -> dict[str, torch.Tensor]:
        """The summed per-step MSE of x_pred [T-1, B, C, H, W] against x_1.. and the summed KL (see
        `teacher_forced_loss`)."""
        # every step has B*C*H*W pixels: the sum over steps of per-step means is the total over one step's count.
        # Written out rather than F.mse_loss, whose gradient comes out NCHW whatever the predictions' format.
        diff = _at_least_float32(x_pred) - _at_least_float32(enc.x[1:])
        mse = diff.square().sum() * (1.0 / x_pred[0].numel())
        kld = kl_divergence(mu, logvar, *(prior or ()), batch_dim=1)
        return {"loss": mse + beta * kld, "mse": mse, "kld": kld}

    def noise_steps(self, n_future: int) -> int:
        """Rows of `generate`'s noise: one z per step, steps 1 .. n_past + n_future - 1."""
        return self.n_past + n_future - 1

    @torch.no_grad()
    def generate(self, past: torch.Tensor, cond: torch.Tensor, n_future: int,
                 noise: torch.Tensor | None = None) -> torch.Tensor:
        """Predict n_future frames after past [B, n_past, C, H, W]; returns [B, n_future, C, H, W].

        cond [B, >= n_past + n_future - 1, D]. Like the reference's `plot`/`pred`: during the context steps the
        posterior sees the true next context frame (warming its state) and the input stays ground truth;
        afterwards z comes from the prior (N(0, I) for the fixed prior, the learned prior's Gaussian otherwise)
        and each prediction is fed back as the next input. `noise` [B, noise_steps(n_future), z_dim] holds the
        standard normal draws of steps 1.. (row i-1 for step i), so the caller decides where randomness comes
        from; `noise=None` uses every Gaussian's mean instead. Does not change train/eval mode: call `.eval()`
        first for inference.
        """
        from toolkit.model.generate import generate

        return generate(self, past, cond, n_future, noise)
