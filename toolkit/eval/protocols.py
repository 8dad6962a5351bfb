"""The evaluation protocols `cvae eval --protocol NAME` knows: one frozen record each, with the source it follows.

A protocol fixes what a number means: how many context frames the model sees, how many frames are scored, how
many samples are drawn per video and how the best one is chosen, which metrics, how PSNR is formed, and, for
FVD, which clips enter the feature sets. Numbers from two protocols are not comparable; every report carries
its protocol record, and report paths include the protocol's name.

Sources (checked against the peers' code, see docs/evaluation.md):
- `svg`: edenton/svg `generate_svg_lp.py` (and SAVP's, SRVP's `test.py`): 2 context frames, 28 predicted,
  100 samples, the best sample chosen separately for each metric by its mean over the predicted frames; PSNR per
  channel with data range 1, then averaged over channels; SSIM 11x11 Gaussian, sigma 1.5; LPIPS AlexNet v0.1
  with inputs in [-1, 1]; mean ± 1.96 std / sqrt(n) over videos.
- `act15`: iVideoGPT (2024) `scripts/evaluation/bair-64-act-cond.sh`, `train_gpt.py` and
  `ivideogpt/utils/video_metric.py`: 1 context frame, 15 predicted with actions, 100 samples, best of 100 per
  metric; PSNR over all channels at once (piqa's), LPIPS with VGG; FVD with every sample's 16-frame clip,
  context frame included, against each real clip once (StyleGAN-V's I3D: torch's resize, covariance over N).
  Deviation: iVideoGPT averages its frame metrics over all 16 frames, its reconstructed context frame
  included; here only the 15 predicted frames are scored (the context frame is given exactly and would score
  the PSNR clamp).
- `fvd`: SRVP (`edouardelasalles/srvp` `test.py`, `metrics/fvd/score.py`): FVD of all 30 frames, the 2 context
  frames included, one sample per test video, through the original TF FVD code (TF1's resize, TF-GAN's
  covariance with N - 1).
- `lab`: the reference lab's protocol, the toolkit's default and its training-time validation: the model's own
  context and predicted frame counts (2 -> 10 for the lab's recipes), `--samples` samples, best per metric.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace

from toolkit.errors import ToolkitError

MODEL = 0
"""A protocol frame count of MODEL means: the model's own (its training n_past / n_future)."""


@dataclass(frozen=True)
class FVDSpec:
    """How FVD's two feature sets are made. Videos are resized to `resize` x `resize` (bilinear) and scaled to
    [-1, 1] before the I3D network (Kinetics-400); the distance is the Fréchet distance of the two Gaussians fit
    to the features (float64)."""
    clip: str
    """`context+future`: each clip is the context frames followed by the predicted (or true) future."""
    samples: str
    """`all`: every sample's clip enters the generated set; `first`: sample 0 only."""
    resize_mode: str
    """`tf1`: TF1's resize_bilinear, no half-pixel centres (the original FVD code, SRVP); `torch`:
    F.interpolate's bilinear with half-pixel centres (StyleGAN-V's TorchScript I3D, iVideoGPT)."""
    ddof: int
    """Covariance divisor N - ddof: 1 as TF-GAN (the original FVD), 0 as StyleGAN-V's and iVideoGPT's
    FeatureStats."""
    resize: int = 224


@dataclass(frozen=True)
class Protocol:
    name: str
    source: str
    """Where the definition comes from (repository and file, or paper)."""
    n_past: int
    """Context frames (MODEL: the model's own)."""
    n_future: int
    """Predicted and scored frames (MODEL: the model's training n_future)."""
    samples: int
    """Samples per video (latents drawn from (seed, video key, sample index))."""
    metrics: tuple[str, ...]
    """Per-frame metrics of the samples, each with its best-of-N: psnr, ssim, lpips."""
    select: str = "per_metric"
    """`per_metric`: for each metric, the sample with the best mean over the predicted frames (higher PSNR and
    SSIM, lower LPIPS), chosen separately per metric."""
    psnr: str = "per_channel"
    """`per_channel`: 10 log10(1 / mse) per channel, then the mean over channels (SVG's `finn_psnr`); `joint`:
    the mse over all channels at once (piqa's PSNR, iVideoGPT)."""
    data_range: float = 1.0
    lpips_net: str = "alex"
    """LPIPS backbone (the lpips package's v0.1 linear layers on top), inputs scaled to [-1, 1]."""
    interval: str = "mean ± 1.96 std / sqrt(n) over videos"
    fvd: FVDSpec | None = None
    requires_cond: bool = False
    """Only for models conditioned on actions."""
    notes: str = ""
    extra: dict = field(default_factory=dict)
    """`deviation`: how this evaluation departs from the published protocol (e.g. fewer samples), if it does."""

    def record(self) -> dict:
        """What a report stores about how its numbers were made (JSON types: lists, not tuples)."""
        return json.loads(json.dumps(asdict(self)))


PROTOCOLS = {p.name: p for p in (
    Protocol("lab", "the reference lab (train_fixed_prior.py's finn_eval_seq), this toolkit's default",
             n_past=MODEL, n_future=MODEL, samples=1, metrics=("psnr", "ssim"),
             notes="the model's own context and predicted frame counts; --samples sets N"),
    Protocol("svg", "edenton/svg generate_svg_lp.py; SAVP; edouardelasalles/srvp test.py",
             n_past=2, n_future=28, samples=100, metrics=("psnr", "ssim", "lpips")),
    Protocol("act15", "thuml/iVideoGPT scripts/evaluation/bair-64-act-cond.sh, ivideogpt/utils/video_metric.py",
             n_past=1, n_future=15, samples=100, metrics=("psnr", "ssim", "lpips"), psnr="joint", lpips_net="vgg",
             fvd=FVDSpec(clip="context+future", samples="all", resize_mode="torch", ddof=0), requires_cond=True,
             notes="frame metrics over the 15 predicted frames (iVideoGPT: all 16, its context reconstructed)"),
    Protocol("fvd", "edouardelasalles/srvp test.py (FVD of 30-frame videos)",
             n_past=2, n_future=28, samples=1, metrics=("psnr", "ssim"),
             fvd=FVDSpec(clip="context+future", samples="first", resize_mode="tf1", ddof=1)),
)}


def get_protocol(name: str) -> Protocol:
    if name not in PROTOCOLS:
        raise ToolkitError(f"unknown protocol {name!r}: choose one of {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name]


def bind(protocol: Protocol, model_n_past: int, model_n_future: int, cond_dim: int, seq_len: int,
         samples: int | None = None, n_future: int | None = None) -> Protocol:
    """The protocol with the model's frame counts filled in (`lab`), `samples`/`n_future` overrides applied
    (only `lab` takes an n_future override: the others fix theirs), checked against the model and the data.
    Raises ToolkitError with one line saying why a protocol does not fit."""
    if n_future is not None and protocol.n_future != MODEL:
        raise ToolkitError(f"protocol {protocol.name} predicts {protocol.n_future} frames by definition; "
                           f"--n-future applies to the lab protocol only")
    n_past = protocol.n_past or model_n_past
    bound = replace(protocol, n_past=n_past, n_future=n_future or protocol.n_future or model_n_future,
                    samples=samples or protocol.samples)
    if n_past != model_n_past:
        raise ToolkitError(f"protocol {protocol.name} gives the model {n_past} context frame(s), but this model was "
                           f"trained with data.n_past={model_n_past}: train one with --data.n_past={n_past}")
    if protocol.requires_cond and cond_dim == 0:
        raise ToolkitError(f"protocol {protocol.name} is action-conditioned, but this model is unconditional")
    if bound.n_past + bound.n_future > seq_len:
        raise ToolkitError(f"protocol {protocol.name} needs {bound.n_past} + {bound.n_future} frames per video, but "
                           f"the sequences have {seq_len}")
    if samples and protocol.samples != MODEL and samples != protocol.samples and protocol.name != "lab":
        bound = replace(bound, extra={**bound.extra, "deviation": f"{samples} samples per video instead of the "
                                                                  f"protocol's {protocol.samples}"})
    if bound.samples < 1 or bound.n_future < 1:
        raise ToolkitError("--samples and --n-future must be >= 1")
    return bound


def lab(n_past: int, n_future: int, samples: int = 1) -> Protocol:
    """The lab protocol with these frame counts (what training-time validation and the benchmarks score)."""
    return replace(PROTOCOLS["lab"], n_past=n_past, n_future=n_future, samples=samples)
