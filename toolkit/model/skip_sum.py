"""The skip term of a decoder block, added to the time steps it serves, without splitting and concatenating rows.

A decoder block's first convolution reads cat(upsampled features, skip); with `skip_repeats` the skip half is
computed once per distinct skip frame (`Decoder._block`), and each skip frame's term serves r consecutive time
steps. Adding it by broadcasting per part and concatenating the parts copies the block's largest maps once more
forward, and splitting them copies the gradient once more backward (a `cat` each: 2% of the tiny model's CPU
step); `add_skip_terms` writes the sums straight into one output and takes the gradient of the features as it is.
"""

from __future__ import annotations

import torch


def add_skip_terms(y: torch.Tensor, s: torch.Tensor, skip_repeats: list[int]) -> torch.Tensor:
    """y [N, C, H, W] (N = M * sum(r), time-major) plus s [M * len(r), C, H, W]: the rows of y's k-th run of r_k
    time steps (M rows each) get s's k-th block of M rows. The result has y's memory format and is the same as
    `cat([(y_k.view(r_k, M, ...) + s_k).flatten(0, 1) for each part])`, exactly (the same additions).

    The concatenating form runs under torch.compile (which traces it into fused kernels anyway) and where
    autocast gives y and s different dtypes."""
    if torch.compiler.is_compiling() or y.dtype != s.dtype:
        m = s.shape[0] // len(skip_repeats)
        parts = [(y_k.view(r, m, *y_k.shape[1:]) + s_k).flatten(0, 1)
                 for y_k, s_k, r in zip(torch.split(y, [r * m for r in skip_repeats]), torch.split(s, m), skip_repeats)]
        return torch.cat(parts) if len(parts) > 1 else parts[0]
    return _AddSkipTerms.apply(y, s, tuple(skip_repeats))


def _runs(skip_repeats: tuple[int, ...], m: int):
    """(k, r, rows of y, rows of s) for each run of time steps that shares one skip frame."""
    start = 0
    for k, r in enumerate(skip_repeats):
        yield k, r, slice(start, start + r * m), slice(k * m, (k + 1) * m)
        start += r * m


class _AddSkipTerms(torch.autograd.Function):
    """`add_skip_terms` for y and s of one dtype: forward one add per run into one output, backward the
    output's gradient passed to y unchanged and summed over each run's time steps into one gradient of s."""

    @staticmethod
    def forward(ctx, y: torch.Tensor, s: torch.Tensor, skip_repeats: tuple[int, ...]) -> torch.Tensor:
        m = s.shape[0] // len(skip_repeats)
        out = torch.empty_like(y)  # y's memory format; row blocks of either format are dense views
        for _, r, rows_y, rows_s in _runs(skip_repeats, m):
            torch.add(y[rows_y].view(r, m, *y.shape[1:]), s[rows_s],
                      out=out[rows_y].view(r, m, *y.shape[1:]))
        ctx.skip_repeats, ctx.m, ctx.s_format = skip_repeats, m, _format(s)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        m = ctx.m
        grad_s = torch.empty((m * len(ctx.skip_repeats), *grad.shape[1:]), dtype=grad.dtype, device=grad.device,
                             memory_format=ctx.s_format)
        for _, r, rows_y, rows_s in _runs(ctx.skip_repeats, m):
            block = grad[rows_y].reshape(r, m, *grad.shape[1:])
            if r == 1:
                grad_s[rows_s] = block[0]
            else:
                torch.sum(block, 0, out=grad_s[rows_s])
        return grad, grad_s, None


def _format(x: torch.Tensor) -> torch.memory_format:
    """x's memory format: channels_last for a 4-D tensor dense in it (and not also contiguous), else contiguous."""
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format
