"""FVD (Unterthiner et al. 2018): I3D Kinetics-400 features of videos and the Fréchet distance of two sets of them.
Lower is better. Needs the `eval` extra.

Network: cd-fvd's PyTorch I3D (`cdfvd.third_party.i3d.pytorch_i3d.InceptionI3d(400)`, piergiaj's port with TF's
'SAME' padding) loaded with TATS's `i3d_pretrained_400.pt`, which TATS converted from the TF-Hub module
deepmind/i3d-kinetics-400/1 that the original FVD code loads (TATS's `tats/fvd/convert_tf_pretrained.py`).
Feature: the net's output, the 400 pre-softmax logits averaged over time. That is cd-fvd's `get_i3d_logits`
(`i3d(x)`, not `extract_features`), the TF-Hub module's default output used by the original FVD, and
StyleGAN-V's `return_features=True` (a TorchScript export of the same module: "raw features before the softmax").
One known difference from TF remains: the port's BatchNorm eps is 1e-5, Sonnet's default (the TF net's) 1e-3;
`load_i3d(bn_eps=1e-3)` sets TF's. Its effect on real features was not measured (no weights here).

Preprocessing (`preprocess`), as cd-fvd's `preprocess_i3d` and the original FVD's `preprocess`: videos
[N, T, 3, H, W] in [0, 1] are rounded to 8 bits (every reference takes uint8 videos; ground-truth frames k/255
come back exactly), resized to 224x224 bilinearly, scaled 2 x / 255 - 1 to [-1, 1] and laid out
[N, 3, T, 224, 224]. T >= 9 (the net's temporal strides of 8 and its final 2-frame average pool).

Resize: `resize="torch"` (default) is F.interpolate(mode="bilinear", align_corners=False) as cd-fvd: half-pixel
centres, source coordinate (dst + 0.5) * in / out - 0.5. The original FVD used TF1's
`tf.image.resize_bilinear(align_corners=False)`, whose half_pixel_centers=False puts the source coordinate at
dst * in / out (no shift, clamped at the last pixel): the picture moves by half a source pixel minus half a
target pixel (0.36 source pixels at 64 -> 224). `resize="tf1"` is that resize (`tf1_resize_bilinear`).
Measured by benchmarks/fvd_resize.py (32 random 64x64 videos of 16 frames per set, seed 0, CPU float32; a
random-weights I3D with calibrated BatchNorm statistics, since no trained weights are here):
- uniform-noise videos: mean |torch - tf1| = 0.240 in [-1, 1] units; FVD between the two preprocessings of the
  same videos 1.89, against 1.72 between two independent sets of such videos (same net, torch resize);
- smooth videos (8x8 noise upsampled, closer to BAIR): mean |torch - tf1| = 0.039; FVD 1.61 against 2.84.
The pixel difference is small on smooth frames but it is a coherent shift, which the 3D convolutions see: with
this net the resize alone moves FVD as far as drawing another set of 32 videos does, and being systematic it
does not shrink with more videos as the sampling spread does. Trained-I3D figures will differ; to follow the
original FVD, use `resize="tf1"`; to compare with cd-fvd's PyTorch FVD, the default.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from toolkit.errors import ToolkitError
from toolkit.eval import weights
from toolkit.eval.frechet import FeatureStats, frechet_distance  # noqa: F401  (the FVD API: fvd.FeatureStats...)

SIZE = (224, 224)
MIN_FRAMES = 9
RESIZE = ("torch", "tf1")


def _import_i3d():
    try:  # the module alone: cdfvd.fvd and cdfvd.third_party.i3d.utils download weights and need more packages
        from cdfvd.third_party.i3d import pytorch_i3d
    except ImportError:
        raise ToolkitError("FVD needs the cd-fvd package of the 'eval' extra: pip install 'cvae-video[eval]'") from None
    return pytorch_i3d


def load_i3d(path: str | os.PathLike | None, device: torch.device | str,
             bn_eps: float | None = None) -> torch.nn.Module:
    """cd-fvd's InceptionI3d(400) with the weights at `path` (default: `weights.resolve("i3d")`), in eval mode on
    `device`. `bn_eps` overrides every BatchNorm's eps (None: the port's 1e-5; 1e-3: TF's).

    The net's `weight_records` holds `weights.check`'s record of the file (its sha256). ToolkitError if the file
    is absent (naming it and `cvae weights fetch i3d`), fails its check or is not an I3D-400 state dict.
    """
    pytorch_i3d = _import_i3d()
    file = weights.resolve("i3d", path)
    record = weights.check("i3d", file)
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file: unpickling raises many types
        raise ToolkitError(f"{file}: not a torch state dict ({type(e).__name__}: {e})".splitlines()[0]) from None
    net = pytorch_i3d.InceptionI3d(400, in_channels=3)
    try:
        net.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError, AttributeError) as e:
        raise ToolkitError(f"{file}: not an I3D Kinetics-400 state dict ({str(e).splitlines()[0][:200]})") from None
    if bn_eps is not None:
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm3d):
                m.eps = bn_eps
    net.weight_records = [record]
    return net.eval().requires_grad_(False).to(device)


def tf1_resize_bilinear(frames: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """frames [N, C, H, W] resized to `size` as TF1's `tf.image.resize_bilinear(align_corners=False)`
    (half_pixel_centers=False): source coordinate = dst * in / out (float32, as TF computes it), the lower
    neighbour its floor, the upper one clamped at the last pixel; rows are interpolated along x first, then
    along y, as TF's kernel does."""
    def axis(n_in: int, n_out: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        src = torch.arange(n_out, dtype=torch.float32, device=frames.device) * torch.tensor(n_in / n_out)
        lo = src.floor().long().clamp(max=n_in - 1)
        return lo, (lo + 1).clamp(max=n_in - 1), (src - lo).to(frames.dtype)

    y0, y1, fy = axis(frames.shape[-2], size[0])
    x0, x1, fx = axis(frames.shape[-1], size[1])
    left, right = frames[..., x0], frames[..., x1]
    rows = left + (right - left) * fx
    top, bottom = rows[..., y0, :], rows[..., y1, :]
    return top + (bottom - top) * fy[:, None]


def preprocess(videos: torch.Tensor, resize: str = "torch") -> torch.Tensor:
    """Videos [N, T, 3, H, W] in [0, 1] -> the I3D's input [N, 3, T, 224, 224] in [-1, 1] (module docstring)."""
    n, t = videos.shape[:2]
    frames = (videos.flatten(0, 1).float() * 255).round()  # the 8-bit videos the references take
    if resize == "torch":
        frames = F.interpolate(frames, size=SIZE, mode="bilinear", align_corners=False)
    elif resize == "tf1":
        frames = tf1_resize_bilinear(frames, SIZE)
    else:
        raise ValueError(f"preprocess: resize must be one of {RESIZE}, got {resize!r}")
    return (2 * frames / 255 - 1).view(n, t, 3, *SIZE).transpose(1, 2)


def i3d_features(net: torch.nn.Module, videos: torch.Tensor, chunk: int = 8, resize: str = "torch") -> torch.Tensor:
    """I3D features [N, 400] (float64, on `videos`' device) of videos [N, T, 3, H, W] in [0, 1], T >= 9.

    `chunk` videos at a time are moved to the net's device and preprocessed there (bounds the memory: the
    224x224 float32 input alone is 9.6 MB per video of 16 frames); a video's features do not depend on `chunk`
    beyond float32 rounding. `resize`: "torch" (cd-fvd's) or "tf1" (the original FVD's), module docstring.
    """
    if videos.dim() != 5 or videos.shape[2] != 3:
        raise ValueError(f"i3d_features: need videos [N, T, 3, H, W], got {tuple(videos.shape)}")
    if videos.shape[1] < MIN_FRAMES:
        raise ToolkitError(f"FVD needs videos of at least {MIN_FRAMES} frames (I3D's temporal strides), "
                           f"got {videos.shape[1]}")
    device = next(net.parameters()).device
    out = []
    with torch.inference_mode():
        for i in range(0, videos.shape[0], chunk):
            out.append(net(preprocess(videos[i:i + chunk].to(device), resize)).double())
    return torch.cat(out).to(videos.device) if out else videos.new_zeros(0, 400, dtype=torch.float64)
