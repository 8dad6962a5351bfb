"""The frame predictor LSTM and the Gaussian LSTM (posterior / learned prior) of SVG (models/lstm.py).

Unlike the reference, the hidden state is not stored on the module: `forward(x, state)` returns the new state,
and `state=None` starts from zeros made with `new_zeros` on the input, so modules know no batch size or device.
A state is a list with one `(h, c)` pair of [B, hidden_size] tensors per layer.
"""

from __future__ import annotations

import torch
from torch import nn

State = list[tuple[torch.Tensor, torch.Tensor]]


def _run_cells(cells: nn.ModuleList, h_in: torch.Tensor, state: State | None) -> tuple[torch.Tensor, State]:
    """Run stacked LSTM cells one step; returns the top layer's output and the new state."""
    if state is None:
        zeros = h_in.new_zeros(h_in.shape[0], cells[0].hidden_size)
        state = [(zeros, zeros)] * len(cells)
    new_state = []
    for cell, hc in zip(cells, state):
        h, c = cell(h_in, hc)
        new_state.append((h, c))
        h_in = h
    return h_in, new_state


class LSTM(nn.Module):
    """Deterministic frame predictor: Linear embed -> stacked LSTMCells -> Linear (+ BatchNorm1d) + Tanh.

    edenton/svg's `lstm` has the BatchNorm1d commented out; `batch_norm=True` puts it back.
    """

    def __init__(self, input_size: int, output_size: int, hidden_size: int, n_layers: int,
                 batch_norm: bool = False) -> None:
        super().__init__()
        self.input_size = input_size
        self.embed = nn.Linear(input_size, hidden_size)
        self.lstm = nn.ModuleList([nn.LSTMCell(hidden_size, hidden_size) for _ in range(n_layers)])
        norm = [nn.BatchNorm1d(output_size)] if batch_norm else []
        self.output = nn.Sequential(nn.Linear(hidden_size, output_size), *norm, nn.Tanh())

    def forward(self, x: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """One step: x [B, input_size] -> (out [B, output_size], new state)."""
        h, state = _run_cells(self.lstm, self.embed(x.reshape(-1, self.input_size)), state)
        return self.output(h), state


class GaussianLSTM(nn.Module):
    """Diagonal Gaussian over z: Linear embed -> stacked LSTMCells -> mu and logvar Linear heads."""

    def __init__(self, input_size: int, output_size: int, hidden_size: int, n_layers: int) -> None:
        super().__init__()
        self.input_size = input_size
        self.embed = nn.Linear(input_size, hidden_size)
        self.lstm = nn.ModuleList([nn.LSTMCell(hidden_size, hidden_size) for _ in range(n_layers)])
        self.mu_net = nn.Linear(hidden_size, output_size)
        self.logvar_net = nn.Linear(hidden_size, output_size)

    def forward(self, x: torch.Tensor, state: State | None = None, eps: torch.Tensor | None = None,
                sample: bool = True) -> tuple[tuple[torch.Tensor, torch.Tensor, torch.Tensor], State]:
        """One step: x [B, input_size] -> ((z, mu, logvar) each [B, output_size], new state).

        z = mu + eps * exp(0.5 * logvar) with the given standard normal noise eps [B, output_size], or noise
        drawn from the default generator when eps is None; with `sample=False`, z = mu and nothing is drawn.
        """
        h, state = _run_cells(self.lstm, self.embed(x.reshape(-1, self.input_size)), state)
        mu = self.mu_net(h)
        logvar = self.logvar_net(h)
        if not sample:
            return (mu, mu, logvar), state
        eps = torch.randn_like(mu) if eps is None else eps.to(mu.dtype)
        return (mu + eps * torch.exp(0.5 * logvar), mu, logvar), state
