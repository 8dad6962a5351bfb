"""How much of the latent the model uses: KL per time step and per z dimension, and active units.

For each video the posterior q(z_t | x_1..t) is run over its true frames (the whole scored window, context and
future, in eval mode), and compared with the prior (N(0, I) for SVG-FP, the learned prior's Gaussian for SVG-LP):
- `kl_per_step` [T-1]: KL(q || p) summed over the z dimensions at each step (nats), averaged over videos;
- `kl_per_dim` [z_dim]: KL of each dimension averaged over the steps and the videos (nats);
- `active_units`: the dimensions whose posterior mean varies over the data by more than 0.01 (Burda et al. 2016,
  "Importance Weighted Autoencoders", section 5.2: A_u = Cov_x(E_q[z_u]) > 0.01), the variance taken over every
  (video, step) of the split; `mean_variance_per_dim` gives the variances themselves.
A dimension the model ignores has its posterior at the prior: KL 0 and a constant mean. Per-video sums are
gathered and added in key order, so the figures do not depend on the ranks or the batch size (to float rounding).
"""

from __future__ import annotations

import torch

ACTIVE = 0.01
"""Burda et al.'s threshold on the variance of a dimension's posterior mean over the data."""


@torch.no_grad()
def posterior_rows(model, frames: torch.Tensor, cond: torch.Tensor, keys: list[str]) -> list[dict]:
    """Per video of frames [B, T, C, H, W] (cond [B, T, D]): {"key", "kl_step" [T-1], "kl_dim" [z] (summed over
    steps), "mu_sum" [z], "mu_sq" [z] (sums over steps of the posterior mean and its square), "steps" T-1}."""
    enc = model._encode(frames, cond)
    _, mu, logvar = model.posterior(enc.h[1:], sample=False)[0]  # [T-1, B, z]
    mu, logvar = mu.double(), logvar.double()
    if model.prior is None:
        kl = -0.5 * (1 + logvar - mu.square() - logvar.exp())
    else:
        _, pmu, plogvar = model.prior(enc.h[:-1], sample=False)[0]
        pmu, plogvar = pmu.double(), plogvar.double()
        kl = 0.5 * (plogvar - logvar) + (logvar.exp() + (mu - pmu).square()) / (2 * plogvar.exp()) - 0.5
    kl_step, kl_dim = kl.sum(2).T.cpu(), kl.sum(0).cpu()  # [B, T-1], [B, z]
    mu_sum, mu_sq = mu.sum(0).cpu(), mu.square().sum(0).cpu()
    return [{"key": key, "kl_step": kl_step[b].tolist(), "kl_dim": kl_dim[b].tolist(), "mu_sum": mu_sum[b].tolist(),
             "mu_sq": mu_sq[b].tolist(), "steps": mu.shape[0]} for b, key in enumerate(keys)]


def summarize_latent(rows: list[dict]) -> dict:
    """The split's latent figures from per-video rows (any order): see the module docstring."""
    if not rows:
        return {}
    rows = sorted(rows, key=lambda r: r["key"])
    steps = sum(r["steps"] for r in rows)
    mean = torch.tensor([r["mu_sum"] for r in rows], dtype=torch.float64).sum(0) / steps
    variance = torch.tensor([r["mu_sq"] for r in rows], dtype=torch.float64).sum(0) / steps - mean.square()
    kl_dim = torch.tensor([r["kl_dim"] for r in rows], dtype=torch.float64).sum(0) / steps
    kl_step = torch.tensor([r["kl_step"] for r in rows], dtype=torch.float64).mean(0)
    return {"kl_per_step": kl_step.tolist(), "kl_per_dim": kl_dim.tolist(), "kl": float(kl_step.sum()),
            "active_units": int((variance > ACTIVE).sum()), "z_dim": len(kl_dim),
            "mean_variance_per_dim": variance.clamp_min(0).tolist()}
