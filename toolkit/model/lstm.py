"""The frame predictor LSTM and the Gaussian LSTM (posterior / learned prior) of SVG (models/lstm.py).

Each runs over a whole sequence of inputs in one call: the Linear embed and the heads act on all S*B rows at
once and the recurrence is one multi-layer `nn.LSTM` call (cuDNN on a GPU, oneDNN's RNN on a CPU: one kernel
per layer instead of a dozen per layer and step). The same modules step one time step at a time (S = 1) where
an input is only known after the previous step, as in free-running training and generation. Stacked
`nn.LSTMCell`s (the reference's layout) and `nn.LSTM` compute the same gate equations with the same
parameters; checkpoints written with the cell layout (`lstm.{k}.weight_ih`) load into `lstm.weight_ih_l{k}`.

Unlike the reference, the hidden state is not stored on the module: `forward(x, state)` returns the new state,
and `state=None` starts from zeros, so modules know no batch size or device. A state is the `(h, c)` pair of
`nn.LSTM`, each [n_layers, B, hidden_size].

Under autocast the recurrence runs in 16 bits, but not always in autocast's dtype. On a GPU, PyTorch's autocast
wrapper of cuDNN RNNs (aten/src/ATen/cudnn/AutocastRNN.cpp, `_cudnn_rnn_cast_reflatten`, unchanged up to the
2.1x sources read) casts the weights (into one flat buffer), the input and the state to float16 whatever
autocast's dtype, bf16 included: cuDNN >= 9.13 could run bf16 RNNs (pytorch#164411), but the wrapper asks for
kHalf. The LSTMs then return float16, and the next autocast op (the heads' Linear) casts to bf16; gates stay
far inside float16's range (tanh/sigmoid inputs of a few units). On a CPU, oneDNN's RNN layer is on autocast's
bf16 list and runs in bf16. tests/test_cuda.py prints what the GPU did.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from toolkit.model.vgg64 import run_layers

State = tuple[torch.Tensor, torch.Tensor]
_CELL_NAME = re.compile(r"^lstm\.(\d+)\.(weight_ih|weight_hh|bias_ih|bias_hh)$")


def _cell_names_to_lstm(state_dict: dict, prefix: str, *args) -> None:
    """Load-state-dict pre-hook: rename the stacked-LSTMCell parameters of older checkpoints in place."""
    for key in [k for k in state_dict if k.startswith(prefix)]:
        m = _CELL_NAME.match(key[len(prefix):])
        if m:
            state_dict[f"{prefix}lstm.{m.group(2)}_l{m.group(1)}"] = state_dict.pop(key)


def _recurrent(input_size: int, hidden_size: int, n_layers: int) -> tuple[nn.Linear, nn.LSTM]:
    return nn.Linear(input_size, hidden_size), nn.LSTM(hidden_size, hidden_size, n_layers)


_ZEROS: dict = {}


def _recur(lstm: nn.LSTM, x: torch.Tensor, state: State | None) -> tuple[torch.Tensor, State]:
    """`lstm(x, state)`, a zero state when None made once per shape, dtype and device (never written to; nn.LSTM
    would fill two new ones on every call)."""
    if state is None:
        key = (lstm.num_layers, x.shape[1], lstm.hidden_size, x.dtype, x.device)
        if key not in _ZEROS:
            _ZEROS[key] = x.new_zeros(key[:3])
        state = (_ZEROS[key], _ZEROS[key])
    return lstm(x, state)


class LSTM(nn.Module):
    """Deterministic frame predictor: Linear embed -> n-layer LSTM -> Linear (+ BatchNorm1d) + Tanh.

    edenton/svg's `lstm` has the BatchNorm1d commented out; `batch_norm=True` puts it back, normalized per time
    step over the B sequences (as the reference's per-step calls do).
    """

    def __init__(self, input_size: int, output_size: int, hidden_size: int, n_layers: int,
                 batch_norm: bool = False) -> None:
        super().__init__()
        self.input_size = input_size
        self.embed, self.lstm = _recurrent(input_size, hidden_size, n_layers)
        norm = [nn.BatchNorm1d(output_size)] if batch_norm else []
        self.output = nn.Sequential(nn.Linear(hidden_size, output_size), *norm, nn.Tanh())
        self._register_load_state_dict_pre_hook(_cell_names_to_lstm)

    def forward(self, x: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """x [S, B, input_size] (S time steps) -> (out [S, B, output_size], new state)."""
        S, B = x.shape[:2]
        h, state = _recur(self.lstm, self.embed(x), state)
        return run_layers(self.output, h.reshape(S * B, -1), S).view(S, B, -1), state


class GaussianLSTM(nn.Module):
    """Diagonal Gaussian over z: Linear embed -> n-layer LSTM -> mu and logvar Linear heads."""

    def __init__(self, input_size: int, output_size: int, hidden_size: int, n_layers: int) -> None:
        super().__init__()
        self.input_size = input_size
        self.embed, self.lstm = _recurrent(input_size, hidden_size, n_layers)
        self.mu_net = nn.Linear(hidden_size, output_size)
        self.logvar_net = nn.Linear(hidden_size, output_size)
        self._register_load_state_dict_pre_hook(_cell_names_to_lstm)

    def forward(self, x: torch.Tensor, state: State | None = None, eps: torch.Tensor | None = None,
                sample: bool = True) -> tuple[tuple[torch.Tensor, torch.Tensor, torch.Tensor], State]:
        """x [S, B, input_size] -> ((z, mu, logvar) each [S, B, output_size], new state).

        z = mu + eps * exp(0.5 * logvar) with the given standard normal noise eps [S, B, output_size], or noise
        drawn from the default generator when eps is None; with `sample=False`, z = mu and nothing is drawn.
        """
        h, state = _recur(self.lstm, self.embed(x), state)
        mu, logvar = self.mu_net(h), self.logvar_net(h)
        if not sample:
            return (mu, mu, logvar), state
        eps = torch.randn_like(mu) if eps is None else eps.to(mu.dtype)
        return (mu + eps * torch.exp(0.5 * logvar), mu, logvar), state
