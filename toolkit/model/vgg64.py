"""VGG-style 64x64 frame encoder and decoder with skip connections (SVG's models/vgg_64.py).

The layout is the reference's exactly; only the channel widths 64/128/256/512 are multiplied by `width`
(rounded, at least 1), so `width=0.125` gives an 8/16/32/64-channel model that runs on a CPU with the same code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def scaled(channels: int, width: float) -> int:
    """Channel count `channels * width`, rounded, at least 1."""
    return max(1, int(round(channels * width)))


def init_weights(m: nn.Module) -> None:
    """The reference's `utils.init_weights`: conv/linear N(0, 0.02) with zero bias, batch norm N(1, 0.02).

    Applied with `module.apply(init_weights)`. LSTM cells keep PyTorch's default init, as in the reference
    (their class name matches neither 'Conv' nor 'Linear').
    """
    name = type(m).__name__
    if "Conv" in name or "Linear" in name:
        nn.init.normal_(m.weight, 0.0, 0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif "BatchNorm" in name:
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


def batch_norm(bn: nn.BatchNorm2d, x: torch.Tensor, groups: int) -> torch.Tensor:
    """`bn(x)`, except that in training mode with groups > 1 the rows of x [N, C, H, W] are `groups` consecutive
    blocks (time-major: one time step each) and each block is normalized as a call of its own, the module's
    running statistics updated once per block, as the reference's per-step calls do.

    Two implementations of the same arithmetic: on a CPU one BatchNorm call per block (2x faster there than
    the vectorized form), on a GPU one statistics reduction over all blocks (a handful of kernels instead of
    several per block: the step is launch-bound at small batches)."""
    if groups == 1 or not bn.training:
        return bn(x)
    if x.device.type == "cpu":
        return torch.cat([bn(block) for block in x.chunk(groups)])
    return per_step_batch_norm(bn, x, groups)


def per_step_batch_norm(bn: nn.BatchNorm2d, x: torch.Tensor, groups: int) -> torch.Tensor:
    """Training-mode BatchNorm of each of the `groups` row blocks of x on its own, in one pass."""
    xv = x.view(groups, -1, *x.shape[1:])  # [T, B, C, H, W], at least float32: bf16 statistics are too coarse
    xv = xv.to(torch.promote_types(x.dtype, torch.float32))
    var, mean = torch.var_mean(xv, dim=(1, 3, 4), keepdim=True, correction=0)
    shape = (1, 1, -1, 1, 1)
    y = (xv - mean) * torch.rsqrt(var + bn.eps) * bn.weight.view(shape) + bn.bias.view(shape)
    if bn.track_running_stats:
        n = xv[0].numel() // xv.shape[2]  # values per channel and block
        with torch.no_grad():
            _update_running(bn, mean.view(groups, -1), var.view(groups, -1) * (n / max(n - 1, 1)))
    return y.view_as(x).to(x.dtype)


def _update_running(bn: nn.BatchNorm2d, means: torch.Tensor, variances: torch.Tensor) -> None:
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
    weights = m * (1 - m) ** torch.arange(steps - 1, -1, -1, device=means.device, dtype=torch.float64)
    for running, stats in ((bn.running_mean, means), (bn.running_var, variances)):
        running.mul_((1 - m) ** steps).add_((weights[:, None] * stats.double()).sum(0).to(running.dtype))
    bn.num_batches_tracked.add_(steps)


def run_layers(layers: nn.Sequential, x: torch.Tensor, groups: int) -> torch.Tensor:
    """Apply a Sequential (nested Sequentials included) with `batch_norm` grouping for its BatchNorm2d layers."""
    for layer in layers:
        if isinstance(layer, nn.Sequential):
            x = run_layers(layer, x, groups)
        elif isinstance(layer, nn.BatchNorm2d):
            x = batch_norm(layer, x, groups)
        else:
            x = layer(x)
    return x


class VGGLayer(nn.Sequential):
    """Conv 3x3 (stride 1, pad 1) + BatchNorm2d + LeakyReLU(0.2)."""

    def __init__(self, nin: int, nout: int) -> None:
        super().__init__(nn.Conv2d(nin, nout, 3, 1, 1), nn.BatchNorm2d(nout), nn.LeakyReLU(0.2, inplace=True))


class Encoder(nn.Module):
    """[N, C, 64, 64] -> (h [N, g_dim] in (-1, 1), skips [64x64, 32x32, 16x16, 8x8 feature maps])."""

    def __init__(self, g_dim: int, channels: int = 3, width: float = 1.0) -> None:
        super().__init__()
        c1, c2, c3, c4 = (scaled(c, width) for c in (64, 128, 256, 512))
        self.g_dim = g_dim
        self.c1 = nn.Sequential(VGGLayer(channels, c1), VGGLayer(c1, c1))  # 64 x 64
        self.c2 = nn.Sequential(VGGLayer(c1, c2), VGGLayer(c2, c2))  # 32 x 32
        self.c3 = nn.Sequential(VGGLayer(c2, c3), VGGLayer(c3, c3), VGGLayer(c3, c3))  # 16 x 16
        self.c4 = nn.Sequential(VGGLayer(c3, c4), VGGLayer(c4, c4), VGGLayer(c4, c4))  # 8 x 8
        self.c5 = nn.Sequential(nn.Conv2d(c4, g_dim, 4, 1, 0), nn.BatchNorm2d(g_dim), nn.Tanh())  # 4 -> 1
        self.mp = nn.MaxPool2d(kernel_size=2, stride=2, padding=0)

    def forward(self, x: torch.Tensor, groups: int = 1) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """`groups` > 1: x holds `groups` blocks of rows (time steps), BatchNorm statistics per block."""
        h1 = run_layers(self.c1, x, groups)
        h2 = run_layers(self.c2, self.mp(h1), groups)
        h3 = run_layers(self.c3, self.mp(h2), groups)
        h4 = run_layers(self.c4, self.mp(h3), groups)
        h5 = run_layers(self.c5, self.mp(h4), groups)
        return h5.reshape(-1, self.g_dim), [h1, h2, h3, h4]


class Decoder(nn.Module):
    """(h [N, g_dim], skips from `Encoder`) -> frames [N, C, 64, 64] in (0, 1)."""

    def __init__(self, g_dim: int, channels: int = 3, width: float = 1.0) -> None:
        super().__init__()
        c1, c2, c3, c4 = (scaled(c, width) for c in (64, 128, 256, 512))
        self.g_dim = g_dim
        self.upc1 = nn.Sequential(nn.ConvTranspose2d(g_dim, c4, 4, 1, 0), nn.BatchNorm2d(c4),
                                  nn.LeakyReLU(0.2, inplace=True))  # 1 -> 4
        self.upc2 = nn.Sequential(VGGLayer(c4 * 2, c4), VGGLayer(c4, c4), VGGLayer(c4, c3))  # 8 x 8
        self.upc3 = nn.Sequential(VGGLayer(c3 * 2, c3), VGGLayer(c3, c3), VGGLayer(c3, c2))  # 16 x 16
        self.upc4 = nn.Sequential(VGGLayer(c2 * 2, c2), VGGLayer(c2, c1))  # 32 x 32
        self.upc5 = nn.Sequential(VGGLayer(c1 * 2, c1), nn.ConvTranspose2d(c1, channels, 3, 1, 1), nn.Sigmoid())
        self.up = nn.UpsamplingNearest2d(scale_factor=2)

    def forward(self, h: torch.Tensor, skips: list[torch.Tensor], skip_repeats: list[int] | None = None,
                groups: int = 1) -> torch.Tensor:
        """Decode h [N, g_dim] with skips [N, ...] (the reference), or, given `skip_repeats` [r_0, r_1, ...],
        with skips of len(r) blocks of M = N / sum(r) rows where block k serves the next r_k blocks of M rows
        of h (consecutive time steps sharing a skip frame): the skip half of each decoder block's first
        convolution then runs once per distinct skip frame instead of once per output (the same result, less
        work). `groups` > 1: BatchNorm statistics per time step, as in `Encoder.forward`."""
        d = run_layers(self.upc1, h.reshape(-1, self.g_dim, 1, 1), groups)
        for block, skip in zip((self.upc2, self.upc3, self.upc4, self.upc5), skips[::-1]):
            d = self._block(block, self.up(d), skip, skip_repeats, groups)
        return d

    @staticmethod
    def _block(block: nn.Sequential, up: torch.Tensor, skip: torch.Tensor, skip_repeats: list[int] | None,
               groups: int) -> torch.Tensor:
        if skip_repeats is None:
            return run_layers(block, torch.cat([up, skip], 1), groups)
        conv, bn, act = block[0]  # conv(cat(up, skip)) = conv_up(up) + conv_skip(skip), by input channel
        n = up.shape[1]
        y = F.conv2d(up, conv.weight[:, :n], conv.bias, padding=1)
        s = F.conv2d(skip, conv.weight[:, n:], None, padding=1)
        y = y.view(sum(skip_repeats), -1, *y.shape[1:])
        rows, start, parts = s.shape[0] // len(skip_repeats), 0, []
        for k, r in enumerate(skip_repeats):  # broadcasting, not indexing: a deterministic backward
            parts.append(y[start:start + r] + s[k * rows:(k + 1) * rows])
            start += r
        return run_layers(block[1:], act(batch_norm(bn, torch.cat(parts).flatten(0, 1), groups)), groups)
