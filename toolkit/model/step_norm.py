"""Training-mode BatchNorm per time step: SVG's reference calls its BatchNorm layers once per time step, so each
step's frames are normalized over that step's sequences only. The toolkit runs all time steps in one call
(rows time-major, one block of rows per step) and keeps the reference's arithmetic with `batch_norm(bn, x,
groups)`, in the form that is fastest on the device.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm


def batch_norm(bn: _BatchNorm, x: torch.Tensor, groups: int) -> torch.Tensor:
    """`bn(x)`, except that in training mode with groups > 1 the rows of x [N, C, ...] are `groups` consecutive
    blocks (time-major: one time step each) and each block is normalized as a call of its own, the module's
    running statistics updated once per block, as the reference's per-step calls do.

    Three implementations of the same arithmetic: on a GPU one statistics reduction over all blocks (a handful
    of kernels instead of several per block: the step is launch-bound at small batches); on a CPU one native
    BatchNorm call per block (2x faster there than the vectorized form), written straight into one output
    (`_BlockBatchNorm`) where x has its weights' dtype, else concatenated (autocast's mixed dtypes,
    torch.compile)."""
    if groups == 1 or not bn.training:
        return bn(x)
    if x.device.type != "cpu":
        return per_step_batch_norm(bn, x, groups)
    if _blocks_in_place(bn, x, groups):
        return _BlockBatchNorm.apply(x, bn.weight, bn.bias, bn, groups)
    return torch.cat([bn(block) for block in x.chunk(groups)])


def _blocks_in_place(bn: _BatchNorm, x: torch.Tensor, groups: int) -> bool:
    """Whether `_BlockBatchNorm` computes bn's per-block calls for x: affine weights of x's dtype (not
    autocast's mixed dtypes), equal row blocks that are dense in x's memory format, and eager mode
    (torch.compile traces the concatenating form)."""
    dense = x.is_contiguous() or (x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last))
    return (bn.affine and bn.weight.dtype == x.dtype and dense and x.shape[0] > 0 and x.shape[0] % groups == 0
            and not torch.compiler.is_compiling())


class _BlockBatchNorm(torch.autograd.Function):
    """`torch.cat([bn(block) for block in x.chunk(groups)])` without the concatenation: each block's native
    BatchNorm writes its rows of one output, and backward each block's gradient its rows of one input gradient
    (the form with the concatenation copies every normalized map twice more, by the forward `cat` and by the
    backward of `chunk`; docs/performance.md, "CPU step"). The same kernels as the module's calls, so the same
    numbers; the running statistics are updated once per block, in order, as by the module."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, bn: _BatchNorm,
                groups: int) -> torch.Tensor:
        out = torch.empty_like(x)  # x's memory format: row blocks of either format are dense views
        means, invstds = x.new_empty(groups, x.shape[1]), x.new_empty(groups, x.shape[1])
        rows = x.shape[0] // groups
        for k in range(groups):
            block = slice(k * rows, (k + 1) * rows)
            torch.ops.aten.native_batch_norm.out(
                x[block], weight, bias, bn.running_mean, bn.running_var, True, _momentum(bn), bn.eps,
                out=out[block], save_mean=means[k], save_invstd=invstds[k])
        ctx.save_for_backward(x, weight, means, invstds)
        ctx.groups, ctx.eps = groups, bn.eps
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        x, weight, means, invstds = ctx.saved_tensors
        fmt = torch.contiguous_format if x.is_contiguous() else torch.channels_last
        grad = grad.contiguous(memory_format=fmt)
        grad_x = torch.empty_like(x)
        grad_w, grad_b = weight.new_empty(ctx.groups, x.shape[1]), weight.new_empty(ctx.groups, x.shape[1])
        rows = x.shape[0] // ctx.groups
        for k in range(ctx.groups):
            block = slice(k * rows, (k + 1) * rows)
            torch.ops.aten.native_batch_norm_backward.out(
                grad[block], x[block], weight, None, None, means[k], invstds[k], True, ctx.eps, [True, True, True],
                out0=grad_x[block], out1=grad_w[k], out2=grad_b[k])
        return grad_x, grad_w.sum(0), grad_b.sum(0), None, None


def _momentum(bn: _BatchNorm) -> float:
    """The running-statistics factor of one training-mode call of bn, counting the call as the module does:
    its momentum, or 1/calls so far (cumulative averages) when the momentum is None."""
    if not bn.track_running_stats:
        return 0.0  # no running statistics to update
    bn.num_batches_tracked.add_(1)
    return bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)


def per_step_batch_norm(bn: _BatchNorm, x: torch.Tensor, groups: int) -> torch.Tensor:
    """Training-mode BatchNorm of each of the `groups` row blocks of x [N, C, ...] on its own, in one call: the
    time steps become channels of one native BatchNorm call (x [T*B, C, ...] -> [1, T*C, B, ...], weights
    repeated), one copy there and one back into x's memory format, instead of statistics, normalization and
    their backward written out in a dozen small kernels. Running statistics (when tracked) are updated once
    per block, in order."""
    C, rest = x.shape[1], x.shape[2:]
    B = x.shape[0] // groups
    flat = x.view(groups, B, C, *rest).transpose(1, 2).reshape(1, groups * C, B, *rest)
    y = F.batch_norm(flat, None, None, bn.weight.repeat(groups), bn.bias.repeat(groups), True, 0.0, bn.eps)
    if bn.track_running_stats:
        with torch.no_grad():
            wide = flat.to(torch.promote_types(flat.dtype, torch.float32))
            var, mean = torch.var_mean(wide, dim=(0, *range(2, flat.dim())), correction=1)
            _update_running(bn, mean.view(groups, C), var.view(groups, C))
    y = y.view(groups, C, B, *rest)
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return y.permute(0, 2, 3, 4, 1).reshape(x.shape[0], *rest, C).permute(0, 3, 1, 2)
    return y.transpose(1, 2).reshape(x.shape)


def _update_running(bn: _BatchNorm, means: torch.Tensor, variances: torch.Tensor) -> None:
    """The running statistics after one module call per row of means/variances [T, C], in order."""
    steps = means.shape[0]
    if bn.momentum is None:  # cumulative averages: one update after the other
        seen = int(bn.num_batches_tracked)  # one host read per call, not per step
        for k, (mean, var) in enumerate(zip(means, variances), start=1):
            bn.running_mean.lerp_(mean.to(bn.running_mean.dtype), 1.0 / (seen + k))
            bn.running_var.lerp_(var.to(bn.running_var.dtype), 1.0 / (seen + k))
        bn.num_batches_tracked.add_(steps)
        return
    m = bn.momentum  # r_T = (1 - m)^T r_0 + sum_t m (1 - m)^(T-1-t) s_t
    weights = _momentum_weights(m, steps, means.device)
    for running, stats in ((bn.running_mean, means), (bn.running_var, variances)):
        running.mul_((1 - m) ** steps).add_((weights @ stats.to(weights.dtype)).to(running.dtype))
    bn.num_batches_tracked.add_(steps)


_WEIGHTS: dict = {}


def _momentum_weights(momentum: float, steps: int, device: torch.device) -> torch.Tensor:
    """m (1 - m)^(T-1-t) for t < T, float64 on `device`; made once per (momentum, T, device), so a step (and a
    CUDA graph's capture) does not rebuild it."""
    key = (momentum, steps, str(device))
    if key not in _WEIGHTS:
        exponents = torch.arange(steps - 1, -1, -1, dtype=torch.float64)
        _WEIGHTS[key] = (momentum * (1 - momentum) ** exponents).to(device)
    return _WEIGHTS[key]
