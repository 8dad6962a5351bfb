"""LPIPS per frame, as SAVP (Lee et al. 2018) and SRVP (Franceschi et al. 2020) report it on BAIR: AlexNet
features, the `lpips` package's v0.1 linear layers, frames scaled from [0, 1] to [-1, 1]. Lower is better
(0 for identical frames).

The backbone is torchvision's ImageNet AlexNet (`alexnet-owt-7be5be79.pth`), read from a local file (never
downloaded here: `cvae weights fetch alexnet` does that); the linear layers ship in the `lpips` wheel
(`lpips/weights/v0.1/alex.pth`). Needs the `eval` extra.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch

from toolkit.errors import ToolkitError
from toolkit.eval import weights

EXTRA = "pip install 'cvae-video[eval]'"

def _slices(ranges: list[range]) -> dict[int, int]:
    return {i: s for s, idx in enumerate(ranges, start=1) for i in idx}


# lpips.pretrained_networks copies torchvision's `features[i]` into five slices, keeping the index as the module
# name. alexnet: features 0-1 -> slice1, 2-4 -> slice2, 5-7 -> slice3, 8-9 -> slice4, 10-11 -> slice5; vgg16:
# 0-3, 4-8, 9-15, 16-22, 23-29.
BACKBONES = {  # net: (weight file, feature index -> slice, conv tensors, what to call it)
    "alex": ("alexnet", _slices([range(0, 2), range(2, 5), range(5, 8), range(8, 10), range(10, 12)]), 10, "AlexNet"),
    "vgg": ("vgg16", _slices([range(0, 4), range(4, 9), range(9, 16), range(16, 23), range(23, 30)]), 26, "VGG16"),
}


def _import_lpips():
    try:
        import lpips
    except ImportError:
        raise ToolkitError(f"LPIPS needs the lpips package of the 'eval' extra: {EXTRA}") from None
    return lpips


def backbone_state(path: Path, net: str = "alex") -> dict[str, torch.Tensor]:
    """torchvision's AlexNet (`net` alex) or VGG16 (vgg) state dict at `path` renamed to the lpips net's keys
    (`features.3.weight` -> `slice2.3.weight`); the classifier is dropped. ToolkitError if the file holds no
    such features."""
    _, slice_of, expected, title = BACKBONES[net]
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file: unpickling raises many types
        raise ToolkitError(f"{path}: not a torch state dict ({type(e).__name__}: {e})".splitlines()[0]) from None
    out = {}
    for key, value in state.items() if isinstance(state, dict) else ():
        part = key.split(".")
        if part[0] == "features" and len(part) == 3 and int(part[1]) in slice_of:
            out[f"slice{slice_of[int(part[1])]}.{part[1]}.{part[2]}"] = value
    if len(out) != expected:
        raise ToolkitError(f"{path}: not torchvision's {title} state dict (found {len(out)} of the "
                           f"{expected} features.* conv tensors)")
    return out


def load_lpips(device: torch.device | str, backbone: str | os.PathLike | None = None,
               net: str = "alex") -> torch.nn.Module:
    """`lpips.LPIPS` (`net`: alex, as SVG/SAVP/SRVP, or vgg, as iVideoGPT; v0.1 linear layers) in eval mode on
    `device`, its backbone read from `backbone` (default: torchvision's cache, `weights.resolve("alexnet")` or
    `"vgg16"`). Lower LPIPS is better.

    The net's `weight_records` lists what was loaded: the backbone's `weights.check` record and the linear
    layers' file with its sha256. ToolkitError if the backbone file is absent (naming it, where it goes and
    `cvae weights fetch NAME`), fails its check, or is not that backbone's state dict.
    """
    lpips = _import_lpips()
    if net not in BACKBONES:
        raise ToolkitError(f"LPIPS backbone must be one of {', '.join(BACKBONES)}, got {net!r}")
    name = BACKBONES[net][0]
    path = weights.resolve(name, backbone)
    record = weights.check(name, path)
    state = backbone_state(path, net)
    with warnings.catch_warnings():  # torchvision's deprecation of `pretrained=`, which lpips passes
        warnings.simplefilter("ignore", UserWarning)
        # pnet_rand: a random backbone, so that lpips never downloads one; the real one is loaded below.
        model = lpips.LPIPS(net=net, version="0.1", pretrained=True, pnet_rand=True, verbose=False)
    try:
        model.net.load_state_dict(state, strict=True)
    except RuntimeError as e:  # the right count of tensors, other shapes: another network
        raise ToolkitError(f"{path}: not torchvision's {BACKBONES[net][3]} state dict "
                           f"({str(e).splitlines()[-1].strip()})") from None
    linear = Path(lpips.__file__).parent / "weights" / "v0.1" / f"{net}.pth"
    model.weight_records = [record, {"name": f"lpips_{net}_v0.1", "path": str(linear),
                                     "sha256": weights.sha256_of(linear), "verified": False,
                                     "check": "none: ships in the lpips wheel"}]
    return model.eval().requires_grad_(False).to(device)


def lpips_per_frame(net: torch.nn.Module, pred: torch.Tensor, target: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """LPIPS [B, T] (float64; lower is better, 0 for identical frames) of frames pred, target [B, T, 3, H, W]
    in [0, 1].

    Frames go to the net in float32, scaled to [-1, 1], `chunk` frames at a time (bounds the activations'
    memory), moved to the net's device; the value of a frame does not depend on `chunk`. H and W >= 31 (AlexNet's
    stride-4 first layer and two 3x3/2 max-pools).
    """
    if pred.shape != target.shape or pred.dim() != 5 or pred.shape[2] != 3:
        raise ValueError(f"lpips_per_frame: need pred and target [B, T, 3, H, W] of one shape, got "
                         f"{tuple(pred.shape)} and {tuple(target.shape)}")
    device = next(net.parameters()).device
    b, t = pred.shape[:2]
    p, g = pred.reshape(b * t, *pred.shape[2:]), target.reshape(b * t, *target.shape[2:])
    out = []
    with torch.inference_mode():
        for i in range(0, b * t, chunk):
            x = p[i:i + chunk].to(device, torch.float32) * 2 - 1
            y = g[i:i + chunk].to(device, torch.float32) * 2 - 1
            out.append(net(x, y).reshape(-1).double())
    return torch.cat(out).reshape(b, t).to(pred.device) if out else pred.new_zeros(b, t, dtype=torch.float64)
