"""A straight port of edenton/svg's training step (`train_svg_fp.py` / `train_svg_lp.py`), with the lab's
teacher forcing and the per-frame conditioning concatenated to the predictor input.

It runs on an `SVG`'s own parameters, one time step at a time: the LSTMs as edenton/svg's stacked `nn.LSTMCell`s
(`torch.lstm_cell` on each layer's weights of the model's `nn.LSTM`), the encoder and decoder with the
reference's call pattern, which decides
when BatchNorm's running statistics are updated (what an evaluation with stored statistics normalizes with):
- SVG-FP (`train_svg_fp.train`): every ground-truth frame is encoded once, `h_seq = [encoder(x[i]) ...]`
  (T calls of B frames, in frame order), before the recurrence;
- SVG-LP (`train_svg_lp.train`): each step encodes its input frame, then its target frame (2 (T-1) calls);
- without teacher forcing (the lab's addition), a step whose input is the previous prediction encodes it;
- the decoder runs once per step; its skips are updated while `i < n_past` (or at every step with
  `skip_from: previous`, the reference's --last_frame_skip), so they come from x_{n_past-2} afterwards.
In training mode each call normalizes its B frames with their own statistics, so the call pattern changes
neither the loss nor the gradients, only the running statistics and the time per step. The port is the
yardstick of `tests/test_model.py` (the batched `SVG` losses must give the same loss and gradients),
`benchmarks/throughput.py` (time per step: NCHW and one Adam per module, as edenton/svg runs) and
`benchmarks/parity.py` (quality at equal steps); build the model with `skip_from: reference` and
`predictor_bn: false` for edenton/svg's architecture.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from toolkit.model.svg import SVG


def _cells(module, x: torch.Tensor, state: list | None) -> tuple[torch.Tensor, list]:
    """One step of a predictor or Gaussian LSTM's embed and stacked LSTM cells: x [B, in] -> (top h, state)."""
    h_in, lstm = module.embed(x), module.lstm
    if state is None:
        zeros = h_in.new_zeros(h_in.shape[0], lstm.hidden_size)
        state = [(zeros, zeros)] * lstm.num_layers
    new_state = []
    for k, hc in enumerate(state):
        weights = [getattr(lstm, f"{name}_l{k}") for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
        h_in, c = torch.lstm_cell(h_in, hc, *weights)
        new_state.append((h_in, c))
    return h_in, new_state


def _gaussian(module, x: torch.Tensor, state: list | None, eps: torch.Tensor | None):
    """The reference's `gaussian_lstm.forward` (+ reparameterize): ((z, mu, logvar), state)."""
    h, state = _cells(module, x, state)
    mu, logvar = module.mu_net(h), module.logvar_net(h)
    eps = torch.randn_like(mu) if eps is None else eps.to(mu.dtype)
    return (mu + eps * logvar.mul(0.5).exp(), mu, logvar), state


def reference_loss(model: SVG, frames: torch.Tensor, cond: torch.Tensor, beta: float,
                   teacher_forcing: bool = True, noise: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The reference's loss of one batch: frames [B, T, C, H, W], cond [B, T, D] -> {"loss", "mse", "kld"}.

    mse is the sum over steps of `nn.MSELoss` per step, kld the sum over steps of the KL summed over z and
    divided by the batch size (`kl_criterion`); the posterior's noise is noise[i-1] at step i (noise
    [T-1, B, z_dim], as `SVG.loss_noise`), or drawn per step from the default generator when None.
    """
    if model.cfg.skip_from == "last_context":
        raise ValueError("the reference loop has no `last_context` skips (use reference or previous)")
    n_past, batch_size = model.n_past, frames.shape[0]
    h_seq = [model.encoder(frames[:, i]) for i in range(frames.shape[1])] if model.prior is None else None
    post = prior = pred = skip = x_pred = None
    mse, kld = 0.0, 0.0
    for i in range(1, frames.shape[1]):
        ground_truth_input = teacher_forcing or i - 1 < n_past
        if h_seq is None:  # train_svg_lp: the input frame, then the target frame
            h, skips = model.encoder(frames[:, i - 1] if ground_truth_input else x_pred)
            h_target = model.encoder(frames[:, i])[0]
        else:  # train_svg_fp: h_seq; a fed-back prediction is encoded when it is the input
            h, skips = h_seq[i - 1] if ground_truth_input else model.encoder(x_pred)
            h_target = h_seq[i][0]
        if model.cfg.skip_from == "previous" or i < n_past:
            skip = skips
        (z_t, mu, logvar), post = _gaussian(model.posterior, h_target, post, None if noise is None else noise[i - 1])
        h_pred, pred = _cells(model.predictor, torch.cat([h, z_t, cond[:, i - 1]], 1), pred)
        h_pred = model.predictor.output(h_pred)
        # model.decoder_cond is not in the reference: the rows the batched model's decoder reads
        x_pred = model.decoder(h_pred, skip, cond=model.decoder_rows(cond.transpose(0, 1), [i]))
        mse = mse + F.mse_loss(x_pred, frames[:, i])
        if model.prior is None:
            kld = kld - 0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp()) / batch_size
        else:
            h_prior, prior = _cells(model.prior, h, prior)
            mu2, logvar2 = model.prior.mu_net(h_prior), model.prior.logvar_net(h_prior)
            s1, s2 = logvar.mul(0.5).exp(), logvar2.mul(0.5).exp()
            kl = torch.log(s2 / s1) + (torch.exp(logvar) + (mu - mu2) ** 2) / (2 * torch.exp(logvar2)) - 1 / 2
            kld = kld + kl.sum() / batch_size
    return {"loss": mse + beta * kld, "mse": mse, "kld": kld}


def reference_optimizers(model: SVG, lr: float, betas: tuple[float, float]) -> list[torch.optim.Optimizer]:
    """One Adam per module, as the reference builds them (the same update as one Adam over all parameters)."""
    modules = [model.predictor, model.posterior, model.encoder, model.decoder]
    if model.prior is not None:
        modules.append(model.prior)
    return [torch.optim.Adam(m.parameters(), lr=lr, betas=betas) for m in modules]


def reference_step(model: SVG, optimizers: list[torch.optim.Optimizer], frames: torch.Tensor, cond: torch.Tensor,
                   beta: float, teacher_forcing: bool = True, noise: torch.Tensor | None = None
                   ) -> dict[str, torch.Tensor]:
    """One training step of the reference: zero grads, loss, backward, every optimizer steps."""
    for opt in optimizers:
        opt.zero_grad()
    out = reference_loss(model, frames, cond, beta, teacher_forcing, noise)
    out["loss"].backward()
    for opt in optimizers:
        opt.step()
    return out
