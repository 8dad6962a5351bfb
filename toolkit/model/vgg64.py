"""VGG-style 64x64 frame encoder and decoder with skip connections (SVG's models/vgg_64.py).

The layout is the reference's exactly; only the channel widths 64/128/256/512 are multiplied by `width`
(rounded, at least 1), so `width=0.125` gives an 8/16/32/64-channel model that runs on a CPU with the same code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from toolkit.model.skip_sum import add_skip_terms
from toolkit.model.spatial_cond import SpatialCond
from toolkit.model.step_norm import batch_norm


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


def run_layers(layers: nn.Sequential, x: torch.Tensor, groups: int) -> torch.Tensor:
    """Apply a Sequential (nested Sequentials included) with `batch_norm` grouping for its BatchNorm layers."""
    for layer in layers:
        if isinstance(layer, nn.Sequential):
            x = run_layers(layer, x, groups)
        elif isinstance(layer, _BatchNorm):
            x = batch_norm(layer, x, groups)
        else:
            x = layer(x)
    return x


def conv_on_whole_map(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """`conv(x)` for an unpadded convolution whose kernel covers the whole map (the encoder's 4x4 convolution
    on 4x4 maps) as one matrix product: x [N, C, k, k] -> [N, C_out, 1, 1]. The same numbers as the
    convolution (to rounding), without the 1x1 outputs whose strides channels_last leaves ambiguous
    (pytorch#95693) and that inductor's stride checks trip on (pytorch#171622)."""
    w = conv.weight
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():  # (H, W, C) order: views
        x, w = x.permute(0, 2, 3, 1), w.permute(0, 2, 3, 1)
    y = F.linear(x.reshape(x.shape[0], -1), w.reshape(w.shape[0], -1), conv.bias)
    return y.view(*y.shape, 1, 1)


UPSAMPLED_TAPS = ((0.0, 0.0, 1.0), (0.0, 1.0, 1.0), (1.0, 1.0, 0.0), (1.0, 0.0, 0.0))
"""[4, 3]: a 3-tap convolution (taps w0 w1 w2, zero padding 1) on a line upsampled 2x by repetition, written as
the 4 taps of a stride-2 transposed convolution (padding 1) on the line itself: output 2i reads x[i-1] w0 +
x[i] (w1 + w2), output 2i+1 reads x[i] (w0 + w1) + x[i+1] w2."""


def conv_on_upsampled(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None,
                      taps: torch.Tensor) -> torch.Tensor:
    """`F.conv2d(nearest_upsample_2x(x), w, bias, padding=1)` for a 3x3 w [C_out, C_in, 3, 3] and x [N, C_in, H,
    W] -> [N, C_out, 2H, 2W], as one stride-2 transposed convolution of x with 4x4 kernels built from w by
    `taps` (UPSAMPLED_TAPS as a tensor on w's device): every output reads 2x2 pixels of x instead of 3x3 of the
    upsampled map, 16/36 of the multiply-adds, and no upsampled map is made, forward or backward. Equal to the
    upsampled form to rounding (reassociated sums)."""
    k = torch.einsum("kp,lq,oipq->iokl", taps, taps, w)  # [C_in, C_out, 4, 4], ConvTranspose2d's layout
    return F.conv_transpose2d(x, k, bias, stride=2, padding=1)


def deconv_from_point(deconv: nn.ConvTranspose2d, h: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """`deconv(h.view(N, C, 1, 1))` for the decoder's 4x4 transposed convolution from a 1x1 map, as one matrix
    product: h [N, C] -> [N, C_out, k, k] (channels_last memory when asked). See `conv_on_whole_map`."""
    w = deconv.weight  # [C, C_out, k, k]
    if channels_last:  # rows in (k, k, C_out) order: the output is channels_last without a copy
        y = (h @ w.permute(0, 2, 3, 1).reshape(w.shape[0], -1)).view(h.shape[0], *w.shape[2:], w.shape[1])
        return (y + deconv.bias.to(y.dtype)).permute(0, 3, 1, 2)  # as the convolution: autocast's dtype
    y = (h @ w.reshape(w.shape[0], -1)).view(h.shape[0], *w.shape[1:])
    return y + deconv.bias.to(y.dtype).view(-1, 1, 1)


class _Rows(torch.autograd.Function):
    """x[start:end] (rows of a batch) whose gradient keeps x's memory format: autograd's slice backward fills a
    contiguous (NCHW) zero tensor, and one NCHW gradient added into channels_last ones sends every later
    elementwise backward down a mixed-format path several times slower on a CPU."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, start: int, end: int) -> torch.Tensor:
        ctx.shape, ctx.start, ctx.end = x.shape, start, end
        channels_last = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
        ctx.format = torch.channels_last if channels_last else torch.contiguous_format
        return x[start:end]

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        # written once: zeros outside the rows, the gradient in them (zeros then a format copy wrote the largest
        # skip three times, 2.5x the time)
        out = torch.empty(ctx.shape, dtype=grad.dtype, device=grad.device, memory_format=ctx.format)
        out[:ctx.start].zero_()
        out[ctx.end:].zero_()
        out[ctx.start:ctx.end] = grad
        return out, None, None


def rows(x: torch.Tensor, start: int, end: int) -> torch.Tensor:
    """Rows start..end-1 of x, with a gradient in x's memory format (see `_Rows`)."""
    return _Rows.apply(x, start, end) if x.requires_grad else x[start:end]


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
        h5 = run_layers(self.c5[1:], conv_on_whole_map(self.c5[0], self.mp(h4)), groups)
        return h5.reshape(-1, self.g_dim), [h1, h2, h3, h4]


class Decoder(nn.Module):
    """(h [N, g_dim], skips from `Encoder`) -> frames [N, C, 64, 64] in (0, 1). With `spatial`, each skip
    block's first layer also gets `SpatialCond`'s bias from the pixel coordinates and cond [N, cond_dim]."""

    def __init__(self, g_dim: int, channels: int = 3, width: float = 1.0, cond_dim: int = 0,
                 spatial: bool = False) -> None:
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
        self.spatial = SpatialCond([c4, c3, c2, c1], cond_dim) if spatial else None
        self.register_buffer("taps", torch.tensor(UPSAMPLED_TAPS), persistent=False)  # for conv_on_upsampled

    def skip_terms(self, skips: list[torch.Tensor]) -> list[torch.Tensor]:
        """The skip half of each block's first convolution, conv_skip(skip) of `_block` (no bias), for skips
        from `Encoder` [N, ...]: fixed while the skip frame is (every generated step after the first reads the
        last context frame's), so generation computes them once per sequence instead of once per step, and
        each step then needs no channel concatenation (in channels_last memory, 22% of a CPU generation step)."""
        terms = []
        for block, skip in zip(self.blocks(), skips[::-1]):
            _, _, w_skip = self._split_first_conv(block, block[0][0].in_channels - skip.shape[1])
            terms.append(F.conv2d(skip, w_skip, None, padding=1))
        return terms

    def blocks(self) -> tuple[nn.Sequential, ...]:
        """The four decoder blocks that take a skip, from 8x8 to 64x64."""
        return self.upc2, self.upc3, self.upc4, self.upc5

    def decode_with_terms(self, h: torch.Tensor, terms: list[torch.Tensor],
                          cond: torch.Tensor | None = None) -> torch.Tensor:
        """`forward(h, skips, cond=cond)` given `skip_terms(skips)` (evaluation mode: no BatchNorm groups) ->
        [N, C, 64, 64]."""
        d = self._from_point(h, 1)
        for k, (block, term) in enumerate(zip(self.blocks(), terms)):
            conv, w_up, _ = self._split_first_conv(block, d.shape[1])
            _, bn, act = block[0]  # bn is an Identity in the folded inference copy
            d = run_layers(block[1:], act(self._where(k, bn(conv_on_upsampled(d, w_up, conv.bias, self.taps)
                                                            + term), cond)), 1)
        return d

    def forward(self, h: torch.Tensor, skips: list[torch.Tensor], skip_repeats: list[int] | None = None,
                groups: int = 1, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Decode h [N, g_dim] with skips [N, ...] (the reference), or, given `skip_repeats` [r_0, r_1, ...],
        with skips of len(r) blocks of M = N / sum(r) rows where block k serves the next r_k blocks of M rows
        of h (consecutive time steps sharing a skip frame): the skip half of each decoder block's first
        convolution then runs once per distinct skip frame instead of once per output (the same result, less
        work). `groups` > 1: BatchNorm statistics per time step, as in `Encoder.forward`. cond [N, cond_dim]:
        the conditioning row of each output, read only with `spatial`."""
        d = self._from_point(h, groups)
        for k, (block, skip) in enumerate(zip(self.blocks(), skips[::-1])):
            if skip_repeats is None and self.spatial is None:
                d = run_layers(block, torch.cat([self.up(d), skip], 1), groups)
            else:
                d = self._block(k, block, d, skip, skip_repeats or [1], groups, cond)
        return d

    def _where(self, k: int, x: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        """x plus block k's `SpatialCond` bias, or x without `spatial`."""
        return x if self.spatial is None else self.spatial(k, x, cond)

    def _from_point(self, h: torch.Tensor, groups: int) -> torch.Tensor:
        """The first block: h [N, g_dim] -> 4x4 maps [N, C, 4, 4], in the decoder's memory format."""
        deconv = self.upc1[0]
        channels_last = deconv.weight.is_contiguous(memory_format=torch.channels_last)
        return run_layers(self.upc1[1:], deconv_from_point(deconv, h.reshape(-1, self.g_dim), channels_last), groups)

    @staticmethod
    def _split_first_conv(block: nn.Sequential, n_up: int) -> tuple[nn.Conv2d, torch.Tensor, torch.Tensor]:
        """(conv, w_up, w_skip): a skip block's first convolution and its weights split by input channel, the
        upsampled features' n_up first, so that conv(cat(up, skip)) = conv_up(up) + conv_skip(skip). Splits, not
        slices: their backward is one cat, a slice's a zero fill and a copy each."""
        conv = block[0][0]
        w_up, w_skip = torch.split(conv.weight, [n_up, conv.weight.shape[1] - n_up], dim=1)
        return conv, w_up, w_skip

    def _block(self, k: int, block: nn.Sequential, d: torch.Tensor, skip: torch.Tensor, skip_repeats: list[int],
               groups: int, cond: torch.Tensor | None) -> torch.Tensor:
        """Skip block k on the previous block's maps d [N, C, H, W] (not yet upsampled) -> [N, C', 2H, 2W]."""
        conv, w_up, w_skip = Decoder._split_first_conv(block, d.shape[1])
        _, bn, act = block[0]
        y = conv_on_upsampled(d, w_up, conv.bias, self.taps)
        s = F.conv2d(skip, w_skip, None, padding=1)
        x = batch_norm(bn, add_skip_terms(y, s, skip_repeats), groups)
        return run_layers(block[1:], act(self._where(k, x, cond)), groups)
