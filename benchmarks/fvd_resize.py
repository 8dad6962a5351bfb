"""How far torch's bilinear resize (cd-fvd, half-pixel centres) is from TF1's `resize_bilinear` (the original FVD,
no half-pixel shift) for FVD's 64x64 -> 224x224 upsampling.

    python benchmarks/fvd_resize.py [--videos 32] [--frames 16] [--seed 0] [--device cpu]

Two kinds of random 64x64 videos: uniform noise per pixel (the worst case for a resize) and smooth videos (8x8
uniform noise upsampled bicubically to 64x64, clamped; closer to BAIR frames). For each: the mean absolute
difference of the two preprocessings in [-1, 1] units (`toolkit.eval.fvd.preprocess`), and, with a
random-weights I3D (cd-fvd's InceptionI3d(400), seeded; its BatchNorm statistics calibrated on 16 other videos
of both kinds, without which a random net's logits are nearly constant, std ~1e-8), the FVD between the two
preprocessings of the same videos beside the FVD between two independent sets of videos of the same kind (the
sampling spread at this set size). Prints one line per kind.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from toolkit.eval.frechet import FeatureStats, frechet_distance
from toolkit.eval.fvd import _import_i3d, i3d_features, preprocess


def videos(kind: str, n: int, t: int, g: torch.Generator) -> torch.Tensor:
    """[n, t, 3, 64, 64] in [0, 1]."""
    if kind == "noise":
        return torch.rand(n, t, 3, 64, 64, generator=g)
    low = torch.rand(n * t, 3, 8, 8, generator=g)
    return F.interpolate(low, size=(64, 64), mode="bicubic", align_corners=False).clamp(0, 1).view(n, t, 3, 64, 64)


def calibrated_i3d(device: str, g: torch.Generator, frames: int) -> torch.nn.Module:
    """A random InceptionI3d(400) whose BatchNorms hold the batch statistics of 8 noise + 8 smooth videos."""
    net = _import_i3d().InceptionI3d(400, in_channels=3)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm3d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average: after one batch, exactly its statistics
    calib = torch.cat([videos("noise", 8, frames, g), videos("smooth", 8, frames, g)])
    with torch.no_grad():
        net.train().to(device)(preprocess(calib.to(device)))
    return net.eval()


def fvd(a: torch.Tensor, b: torch.Tensor) -> float:
    return frechet_distance(FeatureStats().add(a), FeatureStats().add(b))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--videos", type=int, default=32)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)
    net = calibrated_i3d(args.device, g, args.frames)
    for kind in ("noise", "smooth"):
        start = time.perf_counter()
        x, y = videos(kind, args.videos, args.frames, g), videos(kind, args.videos, args.frames, g)
        diff = (preprocess(x, "torch") - preprocess(x, "tf1")).abs().mean().item()
        f_torch, f_tf1 = i3d_features(net, x, resize="torch"), i3d_features(net, x, resize="tf1")
        f_other = i3d_features(net, y, resize="torch")
        print(f"{kind}: mean |torch - tf1| = {diff:.4f} ([-1, 1] units); FVD(torch, tf1 of the same videos) = "
              f"{fvd(f_torch, f_tf1):.3e}; FVD(two independent sets, torch) = {fvd(f_torch, f_other):.3e}; "
              f"feature scale (mean std) = {f_torch.std(0).mean().item():.3e}; "
              f"{args.videos} videos x {args.frames} frames, {time.perf_counter() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
