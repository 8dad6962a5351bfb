"""Latent diagnostics: the KL per step and per dimension equal the training loss's KL term, active units count
the dimensions whose posterior mean varies over the data (Burda et al.), independent of the order of videos."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from test_model import B, N_PAST, batch, calibrate_bn, tiny
from toolkit.eval.latent import ACTIVE, posterior_rows, summarize_latent


@pytest.mark.parametrize("prior", ["fixed", "learned"])
def test_kl_per_step_and_dimension_add_up_to_the_losss_kl_term(prior):
    frames, cond = batch()
    # float64: the KL's terms nearly cancel, which in float32 leaves ~1e-7 per element (1e-4 of these sums)
    model = calibrate_bn(tiny(prior, predictor_bn=True), frames, cond).eval().double()
    frames, cond = frames.double(), cond.double()
    rows = posterior_rows(model, frames, cond, [f"v{b}" for b in range(B)])
    latent = summarize_latent(rows)
    with torch.no_grad():
        kld = model(frames, cond, True, 1.0, torch.zeros(frames.shape[1] - 1, B, 4, dtype=torch.float64))["kld"]
    # the loss: KL summed over steps and z, divided by the batch size; here: per step, averaged over videos
    assert latent["kl"] == pytest.approx(kld.item(), rel=1e-9) and latent["kl"] > 1e-4
    T = frames.shape[1]
    assert len(latent["kl_per_step"]) == T - 1 and len(latent["kl_per_dim"]) == latent["z_dim"] == 4
    assert sum(latent["kl_per_dim"]) * (T - 1) == pytest.approx(latent["kl"], rel=1e-9)
    assert N_PAST < T and all(v >= 0 for v in latent["kl_per_dim"])


def test_active_units_are_the_dimensions_whose_mean_varies_over_the_data():
    rng = np.random.default_rng(0)
    spread = np.array([0.3, 0.05, 0.2, 0.001])  # std of each dimension's posterior mean: two above sqrt(0.01)
    rows, means = [], []
    for v in range(40):
        mu = rng.normal(0.5, spread, size=(6, 4))  # 6 steps
        means.append(mu)
        rows.append({"key": f"v{v:02d}", "kl_step": [0.0] * 6, "kl_dim": [0.0] * 4, "mu_sum": mu.sum(0).tolist(),
                     "mu_sq": (mu ** 2).sum(0).tolist(), "steps": 6})
    latent = summarize_latent(rows)
    variance = np.concatenate(means).var(axis=0)  # over every (video, step)
    assert latent["mean_variance_per_dim"] == pytest.approx(variance.tolist(), rel=1e-9)
    assert latent["active_units"] == int((variance > ACTIVE).sum()) == 2
    assert summarize_latent(rows[::-1]) == latent  # sorted by key: the order the ranks gathered them in is lost
