"""SVG model: shapes, loss bookkeeping, gradients, sampling, parameter count, equality with the reference loop,
overfitting a few sequences, and bf16 autocast."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from toolkit.config import ModelConfig
from toolkit.model import SVG, kl_divergence

B, T, N_PAST = 3, 5, 2


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: these tiny models gain little from two, and on a shared, busy CPU two OpenMP threads
    oversubscribe it (measured: the module took minutes instead of ~20 s)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny(prior="fixed", last_frame_skip=False, cond_dim=7, n_past=N_PAST, seed=0):
    torch.manual_seed(seed)
    cfg = ModelConfig(width=0.125, g_dim=16, z_dim=4, rnn_size=32, prior=prior, last_frame_skip=last_frame_skip)
    return SVG(cfg, cond_dim=cond_dim, n_past=n_past)


def calibrate_bn(model, frames, cond):
    """Set BatchNorm running stats to the exact averages of two train-mode passes, so that eval-mode BatchNorm
    normalizes (the init stats, mean 0 and var 1, leave the N(0, 0.02)-initialized activations nearly constant)."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    with torch.no_grad():
        for tfr in (1.0, 0.0):
            model.train()(frames, cond, tfr=tfr)
    for m in bns:
        m.momentum = 0.1
    return model.eval()


def batch(cond_dim=7, t=T, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(B, t, 3, 64, 64, generator=gen), torch.randn(B, t, cond_dim, generator=gen)


@pytest.mark.parametrize("cond_dim", [7, 0])
@pytest.mark.parametrize("prior", ["fixed", "learned"])
@pytest.mark.parametrize("last_frame_skip", [False, True])
def test_shapes_and_loss(cond_dim, prior, last_frame_skip):
    model = tiny(prior, last_frame_skip, cond_dim)
    frames, cond = batch(cond_dim)
    for tfr in (1.0, 0.0):
        out = model(frames, cond, tfr=tfr, beta=0.5)
        assert set(out) == {"loss", "mse", "kld"} and all(v.dim() == 0 for v in out.values())
        assert torch.isfinite(out["loss"]) and out["kld"] >= 0 and out["mse"] > 0
        assert torch.allclose(out["loss"], out["mse"] + 0.5 * out["kld"])
    model.eval()
    pred = model.generate(frames[:, :N_PAST], cond[:, :N_PAST + 4 - 1], n_future=4)
    assert pred.shape == (B, 4, 3, 64, 64)
    assert ((pred > 0) & (pred < 1)).all()


@pytest.mark.parametrize("prior", ["fixed", "learned"])
@pytest.mark.parametrize("tfr", [1.0, 0.0])
def test_every_parameter_gets_a_gradient(prior, tfr):
    model = tiny(prior)
    frames, cond = batch()
    model(frames, cond, tfr=tfr, beta=0.1)["loss"].backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


@pytest.mark.parametrize("prior", ["fixed", "learned"])
def test_generate_is_seeded(prior):
    frames, cond = batch()
    model = calibrate_bn(tiny(prior), frames, cond)
    run = lambda seed, sample=True: model.generate(  # noqa: E731
        frames[:, :N_PAST], cond, n_future=3, sample=sample, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(run(0), run(0))
    assert (run(0) - run(1)).abs().max() > 1e-3
    assert torch.equal(run(0, sample=False), run(1, sample=False))  # means only: no randomness


def test_default_parameter_count():
    n = SVG(ModelConfig(), cond_dim=7, n_past=2).param_count()
    print(f"default SVG parameters: {n:,}")
    assert 21_000_000 <= n <= 23_000_000


def test_decoder_skip_index_equals_repeated_skips():
    model = tiny().double().eval()
    _, skips = model.encoder(torch.rand(2, 3, 64, 64, dtype=torch.float64))
    h = torch.randn(5, 16, dtype=torch.float64)
    skip_index = torch.tensor([0, 1, 1, 0, 1])
    expected = model.decoder(h, [s[skip_index] for s in skips])
    assert torch.allclose(model.decoder(h, skips, skip_index), expected, rtol=1e-12, atol=1e-14)


def test_bad_shapes_raise():
    model = tiny()
    frames, cond = batch()
    with pytest.raises(ValueError, match="cond"):
        model(frames, cond[..., :3])
    with pytest.raises(ValueError, match="cond"):
        model.eval().generate(frames[:, :N_PAST], cond[:, :3], n_future=3)  # needs 2 + 3 - 1 = 4 rows


def reference_loss(model, frames, cond, beta, use_tf):
    """A reference-style per-step loop (github.com/edenton/svg train_svg_fp.py / train_svg_lp.py + cond):
    the encoder is called twice per step (input and target), the decoder once per step. Skips are updated
    while the input is a context frame (i <= n_past, the last context frame; edenton/svg's `i < n_past`
    would stop one frame earlier, see toolkit/model/svg.py)."""
    cfg, n_past = model.cfg, model.n_past
    torch.rand(())  # SVG.forward's teacher forcing draw comes first in the RNG stream
    post = prior = pred = None
    mse, kld = 0.0, 0.0
    x_in = frames[:, 0]
    for i in range(1, frames.shape[1]):
        h = model.encoder(x_in)
        h_target = model.encoder(frames[:, i])[0]
        if cfg.last_frame_skip or i <= n_past:
            h, skip = h
        else:
            h = h[0]
        (z_t, mu, logvar), post = model.posterior(h_target, post)
        h_pred, pred = model.predictor(torch.cat([h, z_t, cond[:, i - 1]], 1), pred)
        x_pred = model.decoder(h_pred, skip)
        mse = mse + F.mse_loss(x_pred, frames[:, i])
        if model.prior is None:
            kld = kld - 0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp()) / frames.shape[0]
        else:
            (_, mu2, logvar2), prior = model.prior(h, prior, sample=False)
            s1, s2 = logvar.mul(0.5).exp(), logvar2.mul(0.5).exp()
            kl = torch.log(s2 / s1) + (torch.exp(logvar) + (mu - mu2) ** 2) / (2 * torch.exp(logvar2)) - 1 / 2
            kld = kld + kl.sum() / frames.shape[0]
        x_in = frames[:, i] if use_tf or i < n_past else x_pred
    return mse + beta * kld, mse, kld


@pytest.mark.parametrize("prior,last_frame_skip,n_past,tfr", [
    ("fixed", False, 2, 1.0), ("learned", False, 3, 1.0), ("fixed", True, 2, 1.0), ("learned", True, 3, 1.0),
    ("fixed", False, 3, 0.0), ("learned", True, 2, 0.0)])
def test_forward_equals_reference_loop(prior, last_frame_skip, n_past, tfr):
    # Equal weights, equal noise (same seed and draw order: the tf draw, then one eps per step from the
    # posterior) and BatchNorm in eval mode (batching over time changes train-mode statistics), with calibrated
    # running stats so that eval-mode BN is not close to an identity on tiny activations. float64 so that the
    # different summation orders of batched/split convolutions stay far below the tolerances.
    model = tiny(prior, last_frame_skip, n_past=n_past)
    frames, cond = batch(t=6)
    calibrate_bn(model, frames, cond)
    model, frames, cond = model.double(), frames.double(), cond.double()
    torch.manual_seed(5)
    out = model(frames, cond, tfr=tfr, beta=0.3)
    torch.manual_seed(5)
    ref_loss, ref_mse, ref_kld = reference_loss(copy.deepcopy(model), frames, cond, 0.3, use_tf=tfr == 1.0)
    assert torch.allclose(out["mse"], ref_mse, rtol=1e-12, atol=0)
    assert torch.allclose(out["kld"], ref_kld, rtol=1e-12, atol=0)
    assert torch.allclose(out["loss"], ref_loss, rtol=1e-12, atol=0)
    # gradients agree as well
    model.zero_grad()
    torch.manual_seed(5)
    model(frames, cond, tfr=tfr, beta=0.3)["loss"].backward()
    ref_model = copy.deepcopy(model)
    ref_model.zero_grad()
    torch.manual_seed(5)
    reference_loss(ref_model, frames, cond, 0.3, use_tf=tfr == 1.0)[0].backward()
    for (name, p), q in zip(model.named_parameters(), ref_model.parameters()):
        assert (p.grad - q.grad).abs().max() <= 1e-10 * q.grad.abs().max(), name


def moving_squares(n, t, seed=0):
    """n sequences of t 64x64 RGB frames: a coloured 12x12 square moving with constant velocity on grey."""
    rng = np.random.default_rng(seed)
    frames = np.full((n, t, 3, 64, 64), 0.2, dtype=np.float32)
    for s in range(n):
        pos, vel, colour = rng.integers(8, 40, 2), rng.integers(-4, 5, 2), rng.uniform(0.5, 1.0, 3)
        for k in range(t):
            y, x = np.clip(pos + k * vel, 0, 52)
            frames[s, k, :, y:y + 12, x:x + 12] = colour[:, None, None]
    return torch.from_numpy(frames)


def test_tiny_model_overfits_four_sequences():
    torch.manual_seed(0)
    frames = moving_squares(4, 6)
    cond = torch.randn(4, 6, 7)
    model = tiny(seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(40):
        out = model(frames, cond, tfr=1.0, beta=1e-4)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["mse"].item())
    copy_mse = (frames[:, 1:] - frames[:, :-1]).pow(2).mean(dim=(0, 2, 3, 4)).sum().item()  # same scaling
    print(f"overfit mse {losses[0]:.4f} -> {losses[-1]:.4f} (copy-last-frame {copy_mse:.4f})")
    assert losses[-1] < 0.3 * losses[0]
    assert losses[-1] < copy_mse  # more than a flat background: the squares themselves are reproduced


def test_bf16_autocast_forward_keeps_kl_float32():
    model = tiny("learned")
    frames, cond = batch()
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        out = model(frames, cond, tfr=1.0, beta=0.1)
        mu = torch.randn(B, 4, 4).bfloat16()
        logvar = torch.randn(B, 4, 4).bfloat16()
        kl = kl_divergence(mu, logvar)
    assert torch.isfinite(out["loss"])
    assert out["kld"].dtype == torch.float32 and out["mse"].dtype == torch.float32
    expected = -0.5 * (1 + logvar.float() - mu.float() ** 2 - logvar.float().exp()).sum() / B
    assert kl.dtype == torch.float32 and torch.equal(kl, expected)
    out["loss"].backward()
