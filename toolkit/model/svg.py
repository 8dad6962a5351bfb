"""SVG (Denton & Fergus 2018) as one module: VGG64 encoder/decoder, frame predictor, posterior, optional prior.

Notation: frames x_0..x_{T-1}; step i (1 <= i <= T-1) predicts x_i from the input frame x_{i-1}, the latent z_i
and the conditioning row cond_{i-1} (actions[i-1] takes frame i-1 to frame i). The predictor sees
cat(h_{i-1}, z_i, cond_{i-1}) where h = enc(frame). Decoder skips come from the input frame while it is a context
frame (i <= n_past - 1, as edenton/svg's `i < n_past`) and then, per `model.skip_from`, from x_{n_past-2} (the
reference code's choice), from the last context frame x_{n_past-1} (the paper's wording) or from the input frame
of every step (`previous`, the reference's --last_frame_skip).
"""

from __future__ import annotations

import torch
from torch import nn

from toolkit.config import ModelConfig
from toolkit.errors import ConfigError
from toolkit.model.lstm import GaussianLSTM, LSTM
from toolkit.model.vgg64 import Decoder, Encoder, init_weights


def _at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """float16/bfloat16 -> float32; float32 and float64 unchanged."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor, prior_mu: torch.Tensor | None = None,
                  prior_logvar: torch.Tensor | None = None) -> torch.Tensor:
    """KL(q || p) summed over every element and divided by the batch size (dim 0), in (at least) float32
    with autocast off.

    With no prior given p = N(0, I): -0.5 * sum(1 + logvar - mu^2 - exp(logvar)); otherwise the Gaussian-Gaussian
    KL log(s2/s1) + (s1^2 + (mu1 - mu2)^2) / (2 s2^2) - 1/2, as the reference's `kl_criterion`.
    """
    with torch.autocast(device_type=mu.device.type, enabled=False):
        mu, logvar = _at_least_float32(mu), _at_least_float32(logvar)
        if prior_mu is None:
            kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp())
        else:
            pmu, plogvar = _at_least_float32(prior_mu), _at_least_float32(prior_logvar)
            kl = 0.5 * (plogvar - logvar) + (logvar.exp() + (mu - pmu).pow(2)) / (2 * plogvar.exp()) - 0.5
        return kl.sum() / mu.shape[0]


class SVG(nn.Module):
    """SVG-FP (`cfg.prior == "fixed"`) or SVG-LP (`"learned"`) with per-frame conditioning of size `cond_dim`."""

    def __init__(self, cfg: ModelConfig, cond_dim: int, n_past: int, channels: int = 3) -> None:
        super().__init__()
        for key, choices in (("prior", ("fixed", "learned")), ("skip_from", ("reference", "last_context", "previous")),
                             ("bn_stats", ("step", "batch"))):
            if getattr(cfg, key) not in choices:
                raise ConfigError(f"model: 'model.{key}' must be one of {', '.join(choices)}, got "
                                  f"{getattr(cfg, key)!r}")
        if n_past < 1 or cond_dim < 0:
            raise ConfigError(f"model: n_past must be >= 1 and cond_dim >= 0, got {n_past} and {cond_dim}")
        self.cfg, self.cond_dim, self.n_past, self.channels = cfg, cond_dim, n_past, channels
        self.encoder = Encoder(cfg.g_dim, channels, cfg.width)
        self.decoder = Decoder(cfg.g_dim, channels, cfg.width)
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
        return self.n_past - 1 if self.cfg.skip_from == "last_context" else max(self.n_past - 2, 0)

    def forward(self, frames: torch.Tensor, cond: torch.Tensor, teacher_forcing: bool = True,
                beta: float = 1.0) -> dict[str, torch.Tensor]:
        """Training loss of one batch: frames [B, T, C, H, W] in [0, 1], cond [B, T, D] (D may be 0).

        Returns {"loss", "mse", "kld"} (0-dim). As in the reference training loop, `mse` is the SUM over the
        T-1 steps of the per-step pixel mean squared error (nn.MSELoss) and `kld` the SUM over steps of the KL
        summed over z dims and batch divided by the batch size; loss = mse + beta * kld. Divide by T-1 for
        per-frame figures. The KL is computed in float32 with autocast disabled. The posterior's noise comes
        from the default generator.

        `teacher_forcing` (decided by the caller, one decision per batch): inputs are the ground-truth frames;
        all T frames are encoded in ONE encoder call on [T*B, C, H, W] (time-major), the LSTMs run step by step,
        and all T-1
        predictions are decoded in ONE decoder call (a skip frame shared by several steps goes through the skip
        half of each decoder block's first convolution once). Without it, inputs after the context are the
        model's own (non-detached) previous predictions, encoded and decoded step by step (targets are still
        encoded in one call). With `model.bn_stats: step` the batched calls normalize each time step over its B
        sequences, exactly as the reference's per-step calls do in training mode; with `batch` the statistics
        span all B*T (B*(T-1)) frames of the call.
        """
        B, T, C, H, W = frames.shape
        if T < 2 or cond.shape[:2] != (B, T) or cond.shape[2] != self.cond_dim:
            raise ValueError(f"SVG.forward: need frames [B, T>=2, C, H, W] and cond [B, T, {self.cond_dim}], "
                             f"got {tuple(frames.shape)} and {tuple(cond.shape)}")
        groups = T if self.cfg.bn_stats == "step" else 1
        x = frames.transpose(0, 1)  # time-major [T, B, ...]: a step's frames are one contiguous block
        h_all, skips_all = self.encoder(x.reshape(T * B, C, H, W), groups=groups)
        h_all = h_all.view(T, B, -1)
        skips_all = [s.view(T, B, *s.shape[1:]) for s in skips_all]
        post_state = prior_state = pred_state = None
        mus, logvars, prior_mus, prior_logvars, preds = [], [], [], [], []
        x_prev = None
        for i in range(1, T):
            if teacher_forcing or i - 1 < self.n_past:
                h_in, skips_in = h_all[i - 1], [s[i - 1] for s in skips_all]
            else:
                h_in, skips_in = self.encoder(x_prev)
            (z, mu, logvar), post_state = self.posterior(h_all[i], post_state)
            if self.prior is not None:
                (_, pmu, plogvar), prior_state = self.prior(h_in, prior_state, sample=False)
                prior_mus.append(pmu)
                prior_logvars.append(plogvar)
            h_pred, pred_state = self.predictor(torch.cat([h_in, z, cond[:, i - 1].to(h_in.dtype)], 1), pred_state)
            mus.append(mu)
            logvars.append(logvar)
            if teacher_forcing:
                preds.append(h_pred)
            else:
                j = self.skip_source(i)
                x_prev = self.decoder(h_pred, skips_in if j == i - 1 else [s[j] for s in skips_all])
                preds.append(x_prev)
        if teacher_forcing:
            x_pred = self._decode_batched(torch.stack(preds), skips_all, groups > 1)
        else:
            x_pred = torch.stack(preds)
        mse = (_at_least_float32(x_pred) - _at_least_float32(x[1:])).pow(2).mean(dim=(1, 2, 3, 4)).sum()
        mu, logvar = torch.stack(mus, 1), torch.stack(logvars, 1)
        if self.prior is None:
            kld = kl_divergence(mu, logvar)
        else:
            kld = kl_divergence(mu, logvar, torch.stack(prior_mus, 1), torch.stack(prior_logvars, 1))
        return {"loss": mse + beta * kld, "mse": mse, "kld": kld}

    def _decode_batched(self, h_pred: torch.Tensor, skips_all: list[torch.Tensor], per_step: bool) -> torch.Tensor:
        """Decode h_pred [T-1, B, g_dim] (time-major, step i at position i-1) in one decoder call
        -> [T-1, B, C, H, W].

        Skips come from frames `skip_source(i)` of skips_all [T, B, ...]; when several steps share a skip frame,
        only the distinct frames are passed, with how many consecutive steps each serves.
        """
        steps, B = h_pred.shape[:2]
        idx = [self.skip_source(i) for i in range(1, steps + 1)]
        frames = sorted(set(idx))
        h = h_pred.reshape(steps * B, -1)
        groups = steps if per_step else 1
        # idx never decreases and its frames are consecutive: slices (an index list would be a blocking copy
        # to the GPU), each frame serving a run of consecutive steps
        skips = [s[frames[0]:frames[-1] + 1].flatten(0, 1) for s in skips_all]
        repeats = None if len(frames) == steps else [idx.count(j) for j in frames]
        x = self.decoder(h, skips, repeats, groups=groups)
        return x.view(steps, B, *x.shape[1:])

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
        B, n_past = past.shape[:2]
        steps = self.noise_steps(n_future)
        if n_past != self.n_past or cond.shape[0] != B or cond.shape[1] < steps or cond.shape[2] != self.cond_dim \
                or n_future < 1 or (noise is not None and tuple(noise.shape) != (B, steps, self.cfg.z_dim)):
            raise ValueError(f"SVG.generate: need past [B, {self.n_past}, C, H, W], cond [B, >= {steps}, "
                             f"{self.cond_dim}], noise [B, {steps}, {self.cfg.z_dim}] and n_future >= 1, got "
                             f"{tuple(past.shape)}, {tuple(cond.shape)}, "
                             f"{None if noise is None else tuple(noise.shape)} and {n_future}")
        sample = noise is not None
        h_past, skips_past = self.encoder(past.flatten(0, 1))
        h_past = h_past.view(B, n_past, -1)
        skips_past = [s.view(B, n_past, *s.shape[1:]) for s in skips_past]
        post_state = prior_state = pred_state = None
        out, x_prev = [], None
        for i in range(1, n_past + n_future):
            eps = noise[:, i - 1].to(past.device) if sample else None
            if i - 1 < n_past:
                h_in, skips_in = h_past[:, i - 1], [s[:, i - 1] for s in skips_past]
            else:
                h_in, skips_in = self.encoder(x_prev)
            if i < n_past:
                (z, _, _), post_state = self.posterior(h_past[:, i], post_state, eps, sample)
                if self.prior is not None:
                    _, prior_state = self.prior(h_in, prior_state, sample=False)
            elif self.prior is not None:
                (z, _, _), prior_state = self.prior(h_in, prior_state, eps, sample)
            else:
                z = eps.to(h_in.dtype) if sample else h_in.new_zeros(B, self.cfg.z_dim)
            h_pred, pred_state = self.predictor(torch.cat([h_in, z, cond[:, i - 1].to(h_in.dtype)], 1), pred_state)
            if i >= n_past:
                j = self.skip_source(i)
                x_prev = self.decoder(h_pred, skips_in if j == i - 1 else [s[:, j] for s in skips_past])
                out.append(x_prev)
        return torch.stack(out, 1)
