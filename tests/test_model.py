"""SVG model: shapes, loss bookkeeping, gradients, sampling, parameter count, per-step BatchNorm statistics
(equality with the reference loop in eval mode; in training mode: tests/test_recurrence.py), overfitting a few
sequences, and bf16 autocast."""

import copy
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import REPO
from toolkit.config import ModelConfig
from toolkit.model import SVG, kl_divergence
from toolkit.model.reference import reference_loss
from toolkit.model.skip_sum import add_skip_terms
from toolkit.model.step_norm import batch_norm, per_step_batch_norm

B, T, N_PAST = 3, 5, 2


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: these tiny models gain little from two, and on a shared, busy CPU two OpenMP threads
    oversubscribe it (measured: the module took minutes instead of ~20 s)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny(prior="fixed", skip_from="reference", cond_dim=7, n_past=N_PAST, seed=0, **model):
    torch.manual_seed(seed)
    cfg = ModelConfig(width=0.125, g_dim=16, z_dim=4, rnn_size=32, prior=prior, skip_from=skip_from, **model)
    return SVG(cfg, cond_dim=cond_dim, n_past=n_past)


def calibrate_bn(model, frames, cond):
    """Set BatchNorm running stats to the exact averages of two train-mode passes, so that eval-mode BatchNorm
    normalizes (the init stats, mean 0 and var 1, leave the N(0, 0.02)-initialized activations nearly constant)."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    with torch.no_grad():
        for tf in (True, False):
            model.train()(frames, cond, teacher_forcing=tf)
    for m in bns:
        m.momentum = 0.1
    return model.eval()


def batch(cond_dim=7, t=T, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(B, t, 3, 64, 64, generator=gen), torch.randn(B, t, cond_dim, generator=gen)


@pytest.mark.parametrize("cond_dim", [7, 0])
@pytest.mark.parametrize("prior", ["fixed", "learned"])
@pytest.mark.parametrize("skip_from", ["reference", "last_context", "previous"])
def test_shapes_and_loss(cond_dim, prior, skip_from):
    model = tiny(prior, skip_from, cond_dim)
    frames, cond = batch(cond_dim)
    for tf in (True, False):
        out = model(frames, cond, teacher_forcing=tf, beta=0.5)
        assert set(out) == {"loss", "mse", "kld"} and all(v.dim() == 0 for v in out.values())
        assert torch.isfinite(out["loss"]) and out["kld"] >= 0 and out["mse"] > 0
        assert torch.allclose(out["loss"], out["mse"] + 0.5 * out["kld"])
    model.eval()
    pred = model.generate(frames[:, :N_PAST], cond[:, :N_PAST + 4 - 1], n_future=4)
    assert pred.shape == (B, 4, 3, 64, 64)
    assert ((pred > 0) & (pred < 1)).all()


@pytest.mark.parametrize("prior", ["fixed", "learned"])
@pytest.mark.parametrize("tf", [True, False])
@pytest.mark.parametrize("predictor_bn,decoder_cond", [(True, "none"), (False, "none"), (False, "step_and_skip")])
def test_every_parameter_gets_a_gradient(prior, tf, predictor_bn, decoder_cond):
    model = tiny(prior, predictor_bn=predictor_bn, decoder_cond=decoder_cond)
    frames, cond = batch()
    model(frames, cond, teacher_forcing=tf, beta=0.1)["loss"].backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


@pytest.mark.parametrize("prior", ["fixed", "learned"])
def test_generate_uses_the_given_noise(prior):
    frames, cond = batch()
    # the predictor's BatchNorm amplifies the freshly initialized (N(0, 0.02)) weights, so z matters
    model = calibrate_bn(tiny(prior, predictor_bn=True), frames, cond)
    steps = model.noise_steps(3)

    def run(seed):
        noise = None if seed is None else torch.randn(B, steps, 4, generator=torch.Generator().manual_seed(seed))
        return model.generate(frames[:, :N_PAST], cond, n_future=3, noise=noise)

    assert torch.equal(run(0), run(0))
    assert (run(0) - run(1)).abs().max() > 1e-3
    torch.manual_seed(0)
    means = run(None)
    torch.manual_seed(1)
    assert torch.equal(means, run(None))  # means only: no randomness drawn
    with pytest.raises(ValueError, match="noise"):
        model.generate(frames[:, :N_PAST], cond, n_future=3, noise=torch.zeros(B, steps - 1, 4))


def test_default_parameter_count():
    n = SVG(ModelConfig(), cond_dim=7, n_past=2).param_count()
    print(f"default SVG parameters: {n:,}")
    assert 21_000_000 <= n <= 23_000_000


def test_decoder_skip_repeats_equal_repeated_skips():
    model = tiny().double().eval()
    _, skips = model.encoder(torch.rand(2 * 3, 3, 64, 64, dtype=torch.float64))  # 2 skip frames x 3 sequences
    h = torch.randn(5 * 3, 16, dtype=torch.float64)  # 5 steps x 3 sequences, time-major
    rows = [0, 1, 2] + [3, 4, 5] * 4  # step 1 uses skip frame 0, steps 2-5 skip frame 1
    expected = model.decoder(h, [s[rows] for s in skips])
    assert torch.allclose(model.decoder(h, skips, [1, 4]), expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("skip_repeats", [[1, 4], [2, 1, 3], [5]])
def test_skip_terms_added_in_place_equal_the_concatenated_sums(memory_format, skip_repeats):
    # the training step's form (one output, the features' gradient passed through) against the split, broadcast
    # and cat form it replaced: the same additions and reductions, so exactly equal, in the input's memory format
    m = 3  # rows per time step
    y = torch.randn(m * sum(skip_repeats), 4, 8, 8).contiguous(memory_format=memory_format).requires_grad_()
    s = torch.randn(m * len(skip_repeats), 4, 8, 8).contiguous(memory_format=memory_format).requires_grad_()
    grad = torch.randn(y.shape).contiguous(memory_format=memory_format)
    out = add_skip_terms(y, s, skip_repeats)
    parts = [(y_k.view(r, m, 4, 8, 8) + s_k).flatten(0, 1) for y_k, s_k, r
             in zip(torch.split(y, [r * m for r in skip_repeats]), torch.split(s, m), skip_repeats)]
    expected = torch.cat(parts)
    assert torch.equal(out, expected) and out.is_contiguous(memory_format=memory_format)
    for got, want in zip(torch.autograd.grad(out, (y, s), grad), torch.autograd.grad(expected, (y, s), grad)):
        assert torch.equal(got, want) and got.is_contiguous(memory_format=memory_format)
    # autocast's mixed dtypes take the concatenating form: the same values, promoted
    y16 = y.detach().bfloat16()
    mixed = add_skip_terms(y16, s.detach(), skip_repeats)
    assert mixed.dtype == torch.float32 and torch.equal(mixed, add_skip_terms(y16.float(), s.detach(), skip_repeats))


def test_bad_shapes_raise():
    model = tiny()
    frames, cond = batch()
    with pytest.raises(ValueError, match="cond"):
        model(frames, cond[..., :3])
    with pytest.raises(ValueError, match="cond"):
        model.eval().generate(frames[:, :N_PAST], cond[:, :3], n_future=3)  # needs 2 + 3 - 1 = 4 rows


@pytest.mark.parametrize("prior,tf", [("fixed", True), ("fixed", False), ("learned", True), ("learned", False)])
def test_the_reference_port_calls_the_encoder_as_edenton_svg(prior, tf):
    # the call pattern decides BatchNorm's running statistics, which edenton/svg evaluates with:
    # train_svg_fp encodes every frame once, in order, before the recurrence; train_svg_lp encodes each
    # step's input frame, then its target; a fed-back prediction is encoded when it is the input
    model = tiny(prior).train()
    frames, cond = batch(t=6)
    seen = []
    model.encoder.register_forward_hook(lambda module, args, out: seen.append(args[0]))
    reference_loss(model, frames, cond, 0.3, teacher_forcing=tf)
    index = [next((t for t in range(6) if torch.equal(x, frames[:, t])), "pred") for x in seen]
    inputs = [i - 1 if tf or i - 1 < N_PAST else "pred" for i in range(1, 6)]
    if prior == "fixed":
        expected = list(range(6)) + [x for x in inputs if x == "pred"]
    else:
        expected = [k for i, x in enumerate(inputs, start=1) for k in (x, i)]
    assert index == expected
    assert all(int(m.num_batches_tracked) == len(expected) for m in model.encoder.modules()
               if isinstance(m, torch.nn.BatchNorm2d))


def test_batch_statistics_differ_from_the_reference_loop_in_training_mode():
    # bn_stats "batch" normalizes over all B*T frames at once: a different training objective, equal to the
    # reference only in eval mode (below).
    model = tiny(bn_stats="batch").double().train()
    ref = copy.deepcopy(model)
    frames, cond = (x.double() for x in batch(t=6))
    frames = frames * torch.linspace(0.2, 1.0, 6, dtype=torch.float64)[None, :, None, None, None]  # steps differ
    noise = torch.randn(5, B, 4, dtype=torch.float64)
    out = model(frames, cond, beta=0.3, noise=noise)
    assert not torch.allclose(out["mse"], reference_loss(ref, frames, cond, 0.3, noise=noise)["mse"], rtol=1e-6)


@pytest.mark.parametrize("bn_stats,decoder_cond", [("step", "none"), ("batch", "none"), ("step", "step"),
                                                   ("step", "step_and_skip")])
@pytest.mark.parametrize("tf", [True, False])
def test_forward_equals_the_reference_loop_in_eval_mode(bn_stats, decoder_cond, tf):
    """The per-step loop equals the batched calls, the decoder's conditioning rows (decoder_cond) included."""
    model = tiny("learned", bn_stats=bn_stats, predictor_bn=True, decoder_cond=decoder_cond)
    frames, cond = batch(t=6)
    calibrate_bn(model, frames, cond)
    model, frames, cond = model.double(), frames.double(), cond.double()
    noise = torch.randn(5, B, 4, dtype=torch.float64)
    out = model(frames, cond, teacher_forcing=tf, beta=0.3, noise=noise)
    expected = reference_loss(copy.deepcopy(model), frames, cond, 0.3, teacher_forcing=tf, noise=noise)
    assert torch.allclose(out["loss"], expected["loss"], rtol=1e-12, atol=0)


def test_per_step_batch_norm_normalizes_each_step_as_a_call_of_its_own():
    bn = torch.nn.BatchNorm2d(3).train()
    ref = copy.deepcopy(bn)
    x = torch.randn(5 * 4, 3, 6, 6) * torch.arange(1, 21.0)[:, None, None, None]  # 5 steps x 4 sequences
    y = batch_norm(bn, x, groups=5)
    for t in range(5):  # step t normalized on its own, the running statistics updated once per step
        assert torch.allclose(y[4 * t:4 * t + 4], ref(x[4 * t:4 * t + 4]), atol=1e-6)
    assert torch.allclose(bn.running_mean, ref.running_mean) and torch.allclose(bn.running_var, ref.running_var)
    assert int(bn.num_batches_tracked) == 5
    assert torch.equal(batch_norm(bn.eval(), x, groups=5), bn(x))  # eval mode: the running statistics


def batch_norm_twins(channels, momentum, dtype):
    """A training-mode BatchNorm2d with random affine weights and a copy of it, and 5 steps x 4 sequences of
    8x8 maps whose steps have different statistics: (module, copy, x [20, channels, 8, 8])."""
    module = torch.nn.BatchNorm2d(channels, momentum=momentum).to(dtype).train()
    torch.nn.init.normal_(module.weight)
    torch.nn.init.normal_(module.bias)
    scale = torch.arange(1, 21.0, dtype=dtype)[:, None, None, None]
    return module, copy.deepcopy(module), torch.randn(5 * 4, channels, 8, 8, dtype=dtype) * scale


@pytest.mark.parametrize("momentum", [0.1, None])
def test_the_gpu_form_of_per_step_batch_norm_equals_one_call_per_step(momentum):
    chunked, vectorized, x = batch_norm_twins(3, momentum, torch.float64)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y1 = torch.cat([chunked(block) for block in x1.chunk(5)])
    y2 = per_step_batch_norm(vectorized, x2, 5)
    assert torch.allclose(y1, y2, rtol=1e-12, atol=1e-12)
    (y1 ** 3).sum().backward()
    (y2 ** 3).sum().backward()
    assert torch.allclose(x1.grad, x2.grad, rtol=1e-10, atol=1e-12)
    assert torch.allclose(chunked.weight.grad, vectorized.weight.grad, rtol=1e-10)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        assert torch.allclose(getattr(chunked, name).double(), getattr(vectorized, name).double(), rtol=1e-12), name


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_the_cpu_form_of_per_step_batch_norm_equals_one_call_per_step(momentum, memory_format):
    """The in-place CPU form runs the module's own kernels block by block: the same outputs, input gradients and
    running statistics bit for bit, in x's memory format; the weight gradient is a sum in another order."""
    chunked, in_place, x = batch_norm_twins(6, momentum, torch.float32)
    x = x.contiguous(memory_format=memory_format)
    upstream = torch.randn(5 * 4, 6, 8, 8).contiguous(memory_format=memory_format)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y1 = torch.cat([chunked(block) for block in x1.chunk(5)])
    y2 = batch_norm(in_place, x2, 5)
    assert y2.grad_fn is not None and "BlockBatchNorm" in type(y2.grad_fn).__name__  # the form under test
    assert torch.equal(y1, y2) and y2.is_contiguous(memory_format=memory_format)
    (y1 * upstream).sum().backward()
    (y2 * upstream).sum().backward()
    assert torch.equal(x1.grad, x2.grad) and x2.grad.is_contiguous(memory_format=memory_format)
    assert torch.allclose(chunked.weight.grad, in_place.weight.grad, rtol=1e-5, atol=1e-4)
    assert torch.allclose(chunked.bias.grad, in_place.bias.grad, rtol=1e-5, atol=1e-4)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        assert torch.equal(getattr(chunked, name), getattr(in_place, name)), name
    nchw_upstream = upstream.contiguous()  # another format than x's (channels_last): converted, same gradient
    grad, = torch.autograd.grad((batch_norm(in_place, x2, 5) * nchw_upstream).sum(), x2)
    assert torch.allclose(grad, x1.grad, rtol=1e-4, atol=1e-5)
    mixed = batch_norm(in_place, x.bfloat16(), 5)  # bfloat16 maps, float32 weights (autocast): concatenated
    assert "BlockBatchNorm" not in type(mixed.grad_fn).__name__
    assert torch.allclose(mixed.float(), y1, rtol=0.02, atol=0.05)


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
        out = model(frames, cond, beta=1e-4)
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
        out = model(frames, cond, beta=0.1)
        mu = torch.randn(B, 4, 4).bfloat16()
        logvar = torch.randn(B, 4, 4).bfloat16()
        kl = kl_divergence(mu, logvar)
    assert torch.isfinite(out["loss"])
    assert out["kld"].dtype == torch.float32 and out["mse"].dtype == torch.float32
    expected = -0.5 * (1 + logvar.float() - mu.float() ** 2 - logvar.float().exp()).sum() / B
    assert kl.dtype == torch.float32 and torch.equal(kl, expected)
    out["loss"].backward()


def test_gradients_are_bitwise_reproducible_with_several_threads():
    # Exact resume rests on this: two processes with 2 intra-op threads must compute the same gradients bit for
    # bit (an indexed gather of the shared decoder skips once made the scatter-add of its backward order-dependent).
    script = """
import hashlib, torch
from toolkit.config import ModelConfig
from toolkit.model import SVG
torch.set_num_threads(2)
torch.manual_seed(0)
model = SVG(ModelConfig(width=0.125, g_dim=16, z_dim=4, rnn_size=32, skip_from="last_context"), 7, 2)
model = model.to(memory_format=torch.channels_last)
g = torch.Generator().manual_seed(1)
frames, cond = torch.rand(2, 12, 3, 64, 64, generator=g), torch.randn(2, 12, 7, generator=g)
model(frames, cond)["loss"].backward()
print(hashlib.sha256(b"".join(p.grad.numpy().tobytes() for p in model.parameters())).hexdigest())
"""
    runs = [subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=300)
            for _ in range(3)]
    assert all(r.returncode == 0 for r in runs), runs[0].stderr[-2000:]
    assert len({r.stdout for r in runs}) == 1


@pytest.mark.parametrize("prior,decoder_cond", [("fixed", "none"), ("learned", "none"), ("fixed", "step_and_skip")])
def test_the_folded_inference_copy_generates_what_the_model_does(prior, decoder_cond):
    from toolkit.model.inference import folded

    frames, cond = batch()
    # calibrated running statistics (far from their (0, 1) start, so folding them matters) and a predictor
    # BatchNorm that makes z matter, as test_generate_uses_the_given_noise
    model = calibrate_bn(tiny(prior, predictor_bn=True, decoder_cond=decoder_cond), frames, cond).to(
        memory_format=torch.channels_last)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    copy_ = folded(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in copy_.modules())
    assert copy_.encoder.c1[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    steps = model.noise_steps(3)
    noise = [torch.randn(B, steps, 4, generator=torch.Generator().manual_seed(s)) for s in (0, 1)]
    with torch.no_grad():
        expected, got = model.generate(frames[:, :N_PAST], cond, 3, noise[0]), copy_.generate(frames[:, :N_PAST],
                                                                                               cond, 3, noise[0])
        other = model.generate(frames[:, :N_PAST], cond, 3, noise[1])
    assert (expected - got).abs().max() < 1e-5  # float32 reassociation only
    assert (expected - other).abs().max() > 1e-3  # while the noise moves the frames far more
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the model is untouched


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("decoder_cond", ["none", "step"])
def test_decoding_with_precomputed_skip_terms_equals_decoding_with_skips(channels_last, decoder_cond):
    from toolkit.model.inference import folded

    frames, cond = batch()
    model = calibrate_bn(tiny(decoder_cond=decoder_cond), frames, cond)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    x = frames[:, 0].contiguous(memory_format=torch.channels_last) if channels_last else frames[:, 0]
    h = torch.randn(B, 16)
    with torch.no_grad():
        for m in (model, folded(model)):
            _, skips = m.encoder(x)
            expected = m.decoder(h, skips, cond=cond[:, 0])
            got = m.decoder.decode_with_terms(h, m.decoder.skip_terms(skips), cond[:, 0])
            # float32 reassociation only, through the calibrated BatchNorms' gains: 2.8e-6 measured
            assert (expected - got).abs().max() < 1e-5 and expected.std() > 1e-2
            assert got.is_contiguous(memory_format=torch.channels_last) == channels_last


@pytest.mark.parametrize("skip_from", ["reference", "last_context", "previous"])
@pytest.mark.parametrize("decoder_cond", ["none", "step_and_skip"])
def test_generation_reads_the_skips_each_setting_names(skip_from, decoder_cond):
    """Each step's skips come from the frame `skip_source` names, and with decoder_cond its decoder reads the rows
    of step i-1 and of that frame: a generation written with the decoder's plain call over those frames' skips
    and rows gives the same frames."""
    frames, cond = batch()
    model = calibrate_bn(tiny(skip_from=skip_from, decoder_cond=decoder_cond), frames, cond)
    steps = model.noise_steps(3)
    noise = torch.randn(B, steps, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = model.generate(frames[:, :N_PAST], cond, 3, noise)
        seen = list(frames[:, :N_PAST].unbind(1))
        state = None
        for i in range(1, N_PAST + 3):
            h_in, _ = model.encoder(seen[i - 1])
            z = model.posterior(model.encoder(seen[i])[0][None], None, noise[:, i - 1][None])[0][0][0] \
                if i < N_PAST else noise[:, i - 1]
            h_pred, state = model.predictor(torch.cat([h_in, z, cond[:, i - 1]], 1)[None], state)
            if i >= N_PAST:
                j = model.skip_source(i)
                _, skips = model.encoder(seen[j])
                seen.append(model.decoder(h_pred[0], skips, cond=torch.cat([cond[:, i - 1], cond[:, j]], 1)))
    expected = torch.stack(seen[N_PAST:], 1)
    assert (got - expected).abs().max() < 1e-5 and got.std() > 1e-2


@pytest.mark.parametrize("channels_last", [False, True])
def test_pair_max_pools_as_max_pool2d(channels_last):
    from toolkit.model.inference import PairMax

    x = torch.randn(3, 5, 8, 6)
    x = x.contiguous(memory_format=torch.channels_last) if channels_last else x
    got = PairMax()(x)
    assert torch.equal(got, torch.nn.functional.max_pool2d(x, 2))
    assert got.is_contiguous(memory_format=torch.channels_last) == channels_last


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("start,end", [(0, 2), (2, 4), (4, 6)])
def test_rows_gradient_equals_the_slices_and_keeps_the_memory_format(channels_last, start, end):
    from toolkit.model.vgg64 import rows

    x = torch.randn(6, 4, 5, 3)
    x = x.contiguous(memory_format=torch.channels_last) if channels_last else x
    x.requires_grad_(True)
    weight = torch.randn(end - start, 4, 5, 3)
    loss = (rows(x, start, end) * weight).sum()
    junk = torch.full((6, 4, 5, 3), float("nan"))
    del junk  # a freed block of the gradient's size, full of NaN, that its allocation is likely to reuse
    loss.backward()
    expected = torch.zeros(6, 4, 5, 3)
    expected[start:end] = weight
    assert torch.equal(x.grad, expected)  # zeros outside the rows, every one of them written
    assert x.grad.is_contiguous(memory_format=torch.channels_last) == channels_last


def test_decoder_cond_moves_what_the_decoder_draws_with_the_conditioning_and_checks_its_shape():
    """model.decoder_cond: the same h and skips drawn under two conditioning rows differ (without it the decoder
    never reads cond); the coordinate bias is in every block; a wrong cond is one clear error."""
    frames, cond = batch()
    plain, spatial = (calibrate_bn(tiny(decoder_cond=d), frames, cond) for d in ("none", "step"))
    h, other = torch.randn(B, 16), cond[:, 0] + 1.0
    with torch.no_grad():
        for m, moves in ((plain, False), (spatial, True)):
            _, skips = m.encoder(frames[:, 0])
            a, b = m.decoder(h, skips, cond=cond[:, 0]), m.decoder(h, skips, cond=other)
            assert ((a - b).abs().max() > 1e-4) == moves
        with pytest.raises(ValueError, match=r"need cond \[3, 7\]"):
            spatial.decoder(h, skips, cond=cond[:, 0, :4])
    assert [tuple(w.shape) for w in spatial.decoder.spatial.coords] == [(64, 2), (32, 2), (16, 2), (8, 2)]


@pytest.mark.parametrize("decoder_cond,skip_from", [("step", "last_context"), ("step_and_skip", "last_context"),
                                                    ("step_and_skip", "reference"), ("step_and_skip", "previous")])
def test_decoder_rows_are_the_predictors_row_and_the_skip_frames_row(decoder_cond, skip_from):
    """Step i (frame i) reads cond row i-1, as the predictor; with step_and_skip also the row of the frame its skips
    come from, written out here per setting (n_past 2, T 6) rather than derived from `skip_source`."""
    model = tiny(decoder_cond=decoder_cond, skip_from=skip_from)
    cond = torch.arange(6.0)[:, None, None].expand(6, 2, 7)  # time-major [T, B, D]: every entry is its row index
    skip_rows = {"last_context": [0, 1, 1, 1, 1], "reference": [0, 0, 0, 0, 0], "previous": [0, 1, 2, 3, 4]}[skip_from]
    rows = model.decoder_rows(cond, range(1, 6)).view(5, 2, -1)
    assert rows[:, :, :7].eq(torch.arange(5.0)[:, None, None]).all()
    if decoder_cond == "step":
        assert rows.shape[2] == 7
    else:
        assert rows[:, :, 7:].eq(torch.tensor(skip_rows, dtype=torch.float32)[:, None, None]).all()
    assert model.decoder_rows(cond, [4]).shape == (2, 7 if decoder_cond == "step" else 14)
    assert tiny().decoder_rows(cond, [4]) is None
    with pytest.raises(ValueError, match="consecutive"):
        model.decoder_rows(cond, [2, 4])
