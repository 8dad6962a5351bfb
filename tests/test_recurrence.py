"""Parallel-in-time SVG: the one-call-per-module losses equal a per-step loop and edenton/svg's loop
(`toolkit.model.reference`) in float64, LSTM stacks equal stacked cells, older checkpoints' names load, the
matrix-product forms of the 4x4 layers equal the layers, and the backward never mixes memory formats."""

import collections
import copy

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from toolkit.config import ModelConfig
from toolkit.model import SVG, kl_divergence
from toolkit.model.lstm import LSTM, GaussianLSTM
from toolkit.model.reference import reference_loss
from toolkit.model.vgg64 import conv_on_whole_map, deconv_from_point

B, T = 3, 6


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny(prior="fixed", skip_from="reference", n_past=2, **model):
    torch.manual_seed(0)
    cfg = ModelConfig(width=0.125, g_dim=16, z_dim=4, rnn_size=32, prior=prior, skip_from=skip_from, **model)
    return SVG(cfg, cond_dim=7, n_past=n_past)


def batch(t=T, dtype=torch.float64):
    g = torch.Generator().manual_seed(1)
    return (torch.rand(B, t, 3, 64, 64, generator=g, dtype=dtype), torch.randn(B, t, 7, generator=g, dtype=dtype),
            torch.randn(t - 1, B, 4, generator=g, dtype=dtype))


def per_step_loss(model, frames, cond, teacher_forcing, beta, noise):
    """The loop SVG.forward ran before the recurrences ran in one call (4e72252): the encoder over all frames at
    once, then the posterior, prior, predictor and decoder one time step at a time."""
    Bn, Tn = frames.shape[:2]
    h_all, skips_all = model.encoder(frames.transpose(0, 1).reshape(Tn * Bn, *frames.shape[2:]), groups=Tn)
    h_all, skips_all = h_all.view(Tn, Bn, -1), [s.view(Tn, Bn, *s.shape[1:]) for s in skips_all]
    post = prior = pred = x_prev = None
    stats, preds = collections.defaultdict(list), []
    for i in range(1, Tn):
        if teacher_forcing or i - 1 < model.n_past:
            h_in, skips_in = h_all[i - 1], [s[i - 1] for s in skips_all]
        else:
            h_in, skips_in = model.encoder(x_prev)
        (_, mu, logvar), post = model.posterior(h_all[i][None], post, noise[i - 1][None])
        z = mu + noise[i - 1] * torch.exp(0.5 * logvar)
        if model.prior is not None:
            (_, pmu, plogvar), prior = model.prior(h_in[None], prior, sample=False)
            stats["pmu"].append(pmu[0])
            stats["plogvar"].append(plogvar[0])
        h_pred, pred = model.predictor(torch.cat([h_in, z[0], cond[:, i - 1]], 1)[None], pred)
        stats["mu"].append(mu[0])
        stats["logvar"].append(logvar[0])
        j = model.skip_source(i)
        x_prev = model.decoder(h_pred[0], skips_in if j == i - 1 else [s[j] for s in skips_all])
        preds.append(x_prev)
    mse = sum(F.mse_loss(p, frames[:, i]) for i, p in enumerate(preds, start=1))
    stacked = {k: torch.stack(v) for k, v in stats.items()}
    prior_stats = (stacked["pmu"], stacked["plogvar"]) if model.prior is not None else ()
    kld = kl_divergence(stacked["mu"], stacked["logvar"], *prior_stats, batch_dim=1)
    return {"loss": mse + beta * kld, "mse": mse, "kld": kld}


def assert_same_loss_and_gradients(model, others, frames, cond, tf, noise):
    out = model(frames, cond, teacher_forcing=tf, beta=0.3, noise=noise)
    out["loss"].backward()
    for other, fn in others:
        expected = fn(other, frames, cond, tf, 0.3, noise)
        for key in ("mse", "kld", "loss"):
            assert torch.allclose(out[key], expected[key], rtol=1e-12, atol=0), (fn.__name__, key)
        expected["loss"].backward()
        # relative to the largest gradient: a conv bias in front of training-mode BatchNorm has a true gradient
        # of 0, so both sides hold only rounding noise there
        scale = max(q.grad.abs().max() for q in other.parameters())
        for (name, p), q in zip(model.named_parameters(), other.parameters()):
            assert (p.grad - q.grad).abs().max() <= 1e-10 * scale, (fn.__name__, name)


def reference(model, frames, cond, tf, beta, noise):
    return reference_loss(model, frames, cond, beta, teacher_forcing=tf, noise=noise)


@pytest.mark.parametrize("prior,skip_from,n_past", [
    ("fixed", "reference", 2), ("learned", "reference", 3), ("fixed", "previous", 3), ("learned", "previous", 2)])
@pytest.mark.parametrize("tf", [True, False])
@pytest.mark.parametrize("predictor_bn", [False, True])
def test_losses_equal_the_per_step_loop_and_the_reference_in_training_mode(prior, skip_from, n_past, tf,
                                                                           predictor_bn):
    # bn_stats "step": every time step is normalized over its own B frames, so in training mode the one-call
    # losses equal loops that call each module once per step; float64 keeps the summation orders apart from
    # the tolerances. The same noise on all sides.
    model = tiny(prior, skip_from, n_past, predictor_bn=predictor_bn).double().train()
    frames, cond, noise = batch()
    others = [(copy.deepcopy(model), per_step_loss), (copy.deepcopy(model), reference)]
    assert_same_loss_and_gradients(model, others, frames, cond, tf, noise)


@pytest.mark.parametrize("tf", [True, False])
def test_last_context_skips_equal_the_per_step_loop(tf):
    model = tiny("learned", "last_context", 2).double().train()
    frames, cond, noise = batch()
    assert_same_loss_and_gradients(model, [(copy.deepcopy(model), per_step_loss)], frames, cond, tf, noise)


@pytest.mark.parametrize("module", [LSTM(9, 5, 7, 2), GaussianLSTM(9, 5, 7, 2)])
def test_an_lstm_stack_equals_stacked_cells_and_steps_equal_one_call(module):
    module = module.double()
    x = torch.randn(4, 3, 9, dtype=torch.float64, requires_grad=True)
    eps = torch.randn(4, 3, 5, dtype=torch.float64)
    kwargs = {"eps": eps} if isinstance(module, GaussianLSTM) else {}
    whole = module(x, **kwargs)[0]
    whole = whole[0] if isinstance(whole, tuple) else whole
    cells = [torch.nn.LSTMCell(7, 7).double() for _ in range(2)]
    for k, cell in enumerate(cells):  # the reference's layout, with the stack's weights
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            setattr(cell, name, getattr(module.lstm, f"{name}_l{k}"))
    state, outs, steps, stepped = [(torch.zeros(3, 7, dtype=torch.float64),) * 2] * 2, [], None, []
    for t in range(4):
        h, new_state = module.embed(x[t]), []
        for cell, hc in zip(cells, state):
            new_state.append(cell(h, hc))
            h = new_state[-1][0]
        state = new_state
        out, steps = module(x[t:t + 1], steps, **{k: v[t:t + 1] for k, v in kwargs.items()})
        stepped.append(out[0] if isinstance(out, tuple) else out)
        top = state[-1][0]
        outs.append(module.output(top) if isinstance(module, LSTM) else module.mu_net(top)
                    + eps[t] * torch.exp(0.5 * module.logvar_net(top)))
    assert torch.allclose(whole, torch.stack(outs), rtol=1e-12, atol=1e-14)
    assert torch.allclose(whole, torch.cat(stepped), rtol=1e-12, atol=1e-14)
    g1, = torch.autograd.grad(whole.sum(), x)
    g2, = torch.autograd.grad(torch.stack(outs).sum(), x)
    assert torch.allclose(g1, g2, rtol=1e-10, atol=1e-14)


def test_checkpoints_with_stacked_cell_names_load():
    model = tiny("learned", predictor_bn=True)
    old = {}
    for key, value in model.state_dict().items():  # the names of checkpoints written before nn.LSTM
        for k in range(2):
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                key = key.replace(f"lstm.{name}_l{k}", f"lstm.{k}.{name}")
        old[key] = value.clone() + 1
    assert "predictor.lstm.1.weight_hh" in old and "prior.lstm.0.bias_ih" in old
    fresh = tiny("learned", predictor_bn=True)
    fresh.load_state_dict(old)  # strict
    assert all(torch.equal(v, model.state_dict()[k] + 1) for k, v in fresh.state_dict().items())


@pytest.mark.parametrize("channels_last", [False, True])
def test_the_matrix_product_forms_equal_the_4x4_layers(channels_last):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    conv = torch.nn.Conv2d(6, 5, 4).double().to(memory_format=fmt)
    x = torch.randn(3, 6, 4, 4, dtype=torch.float64).contiguous(memory_format=fmt)
    assert torch.allclose(conv_on_whole_map(conv, x), conv(x), rtol=1e-12, atol=1e-14)
    deconv = torch.nn.ConvTranspose2d(5, 6, 4).double().to(memory_format=fmt)
    h = torch.randn(3, 5, dtype=torch.float64)
    y = deconv_from_point(deconv, h, channels_last)
    assert torch.allclose(y, deconv(h.view(3, 5, 1, 1)), rtol=1e-12, atol=1e-14)
    assert y.is_contiguous(memory_format=fmt)


class FormatLog(TorchDispatchMode):
    """The memory formats of the 4-D tensor arguments of every elementwise backward op."""

    OPS = ("leaky_relu_backward", "native_batch_norm_backward", "sigmoid_backward", "add", "mul")

    def __init__(self):
        super().__init__()
        self.mixed = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        maps = [a for a in args if isinstance(a, torch.Tensor) and a.dim() == 4 and a.shape[-1] > 1]
        if func.overloadpacket.__name__ in self.OPS and len(maps) > 1:
            formats = {a.is_contiguous(memory_format=torch.channels_last) for a in maps}
            if len(formats) > 1:
                self.mixed.append((func.overloadpacket.__name__, [tuple(a.shape) for a in maps]))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("tf", [True, False])
@pytest.mark.parametrize("skip_from", ["last_context", "reference"])
def test_a_channels_last_step_never_mixes_memory_formats(tf, skip_from):
    # one NCHW gradient among channels_last ones made every later elementwise backward several times slower.
    # (`previous` skips concatenate channels, and the concatenation's gradient is a strided slice of them.)
    model = tiny(skip_from=skip_from).to(memory_format=torch.channels_last).train()
    frames, cond, noise = batch(dtype=torch.float32)
    with FormatLog() as log:
        model(frames, cond, tf, 0.1, noise)["loss"].backward()
    assert not log.mixed, log.mixed[:5]


def test_the_lstms_run_in_bf16_under_cpu_autocast():
    module = LSTM(9, 5, 7, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h, _ = module.lstm(module.embed(torch.randn(4, 3, 9)))
        out, (hn, cn) = module(torch.randn(4, 3, 9))
    assert h.dtype == hn.dtype == cn.dtype == torch.bfloat16 and out.dtype == torch.bfloat16
