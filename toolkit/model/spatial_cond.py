"""Where-conditioning of the decoder (`model.decoder_cond`): a bias linear in the pixel's coordinates and in the
step's conditioning row, added to each skip block's first layer after its BatchNorm, before its activation.

Why: SVG's decoder learns where to draw from a g_dim vector through a 1x1 -> 4x4 transposed convolution and
upsampling, and convolutions are bad at turning a coordinate into a place (Liu et al. 2018, "An intriguing
failing of convolutional neural networks and the CoordConv solution", arXiv:1807.03247). The arm is where the
conditioning (its end-effector position and the action) says; with a per-channel bias w_c . (x, y) + a_c . cond
each channel is a ramp whose offset the conditioning moves, and the block's next layers (3x3 convolutions and
leaky ReLUs) can combine two opposite ramps into an object at that place. It goes after the BatchNorm so that
folding the BatchNorm into the convolution for inference (`inference.folded`) leaves it as it is.
"""

from __future__ import annotations

import torch
from torch import nn


class SpatialCond(nn.Module):
    """Per skip block k (8x8 to 64x64 maps, `channels[k]` channels): coordinate weights [C_k, 2] and, for
    cond_dim > 0, a bias-free Linear(cond_dim, C_k). The Linear takes `init_weights`' N(0, 0.02); the coordinate
    weights are drawn from the same N(0, 0.02) here."""

    def __init__(self, channels: list[int], cond_dim: int) -> None:
        super().__init__()
        self.coords = nn.ParameterList(nn.Parameter(torch.randn(c, 2) * 0.02) for c in channels)
        self.cond = nn.ModuleList(nn.Linear(cond_dim, c, bias=False) for c in channels) if cond_dim else None

    def forward(self, k: int, x: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        """x [N, C_k, H, W] plus block k's bias for cond [N, cond_dim] (its rows in x's order; ignored when
        cond_dim is 0), in x's dtype and memory format. Coordinates run from -1 (left/top pixel centre) to 1."""
        H, W = x.shape[-2:]
        w = self.coords[k].to(x.dtype)
        xs = torch.linspace(-1.0, 1.0, W, device=x.device, dtype=x.dtype)
        ys = torch.linspace(-1.0, 1.0, H, device=x.device, dtype=x.dtype)
        pos = (w[:, 0, None, None] * xs + w[:, 1, None, None] * ys[:, None])[None]  # [1, C, H, W]
        if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
            pos = pos.contiguous(memory_format=torch.channels_last)  # a mixed-format add would be NCHW, slower
        out = x + pos
        if self.cond is not None:
            if cond is None or cond.shape != (x.shape[0], self.cond[k].in_features):
                raise ValueError(f"decoder: need cond [{x.shape[0]}, {self.cond[k].in_features}], got "
                                 f"{None if cond is None else tuple(cond.shape)}")
            out = out + self.cond[k](cond.to(x.dtype))[:, :, None, None].to(x.dtype)
        return out
