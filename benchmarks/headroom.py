"""The latent's headroom in the embedded worlds: what knowing the hidden state is worth, and what a model gets.

    python benchmarks/headroom.py [--world pushing|shapes] [--videos 100] [--samples 10] [--n-past 2]
        [--n-future 10] [--seed 0] [--checkpoint RUN/checkpoints/best --shards shards/pushing]

For each of the first --videos test sequences of the world (as `cvae synth --seed SEED` writes them), N futures
are rendered with the hidden state after the context resampled from the world's prior (`toolkit/data/worlds/
headroom.py`): what a perfect model that does not know the hidden state predicts. Scores are mean squared errors
against the true future over the n_future frames after the n_past context frames (pixels in [0, 1], all
channels), per video, then averaged over videos with a 95% interval (1.96 std / sqrt(n)); MSE rather than PSNR
because most futures of the pushing world do not depend on the hidden state at all, and their PSNR is the clamp.
- best of N: the resample closest to the truth, the most a latent can give under best-of-N;
- mean of N: the average resample's error;
- pixel mean: the per-pixel mean of the N resamples, the best single prediction in MSE (a perfect model that
  ignores its latent);
- headroom = pixel mean - best of N: the error a latent can remove under best-of-N.
With --checkpoint, the model's own best-of-N and mean-of-N on the same videos (its samples drawn as `cvae eval`
draws them): the share of the headroom it recovers = (its mean-of-N - its best-of-N) / headroom.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from toolkit.data.worlds.digits import generate_shapes_sequence  # noqa: E402
from toolkit.data.worlds.headroom import resampled_futures  # noqa: E402
from toolkit.data.worlds.pushing import generate_pushing_sequence  # noqa: E402
from toolkit.data.worlds.synth import sequence_seed  # noqa: E402


def truth(world: str, seed: int) -> np.ndarray:
    return generate_pushing_sequence(seed)[0] if world == "pushing" else generate_shapes_sequence(seed)


def as_video(frames: np.ndarray) -> torch.Tensor:
    """uint8 [..., T, H, W, 3] -> float64 [..., T, 3, H, W] in [0, 1]."""
    return torch.from_numpy(frames).movedim(-1, -3).double() / 255


def mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error over frames and pixels: [..., T, C, H, W] -> [...]."""
    return (pred - target).square().mean(dim=(-4, -3, -2, -1))


def oracle(world: str, seed: int, args) -> dict[str, float]:
    """One video's errors of the resampled futures."""
    window = slice(args.n_past, args.n_past + args.n_future)
    target = as_video(truth(world, seed))[window]
    samples = as_video(resampled_futures(world, seed, args.n_past, args.samples))[:, window]
    errors = mse(samples, target)
    return {"best": float(errors.min()), "mean": float(errors.mean()),
            "pixel_mean": float(mse(samples.mean(0), target)), "depends": bool(errors.max() > 0)}


@torch.no_grad()
def model_errors(args, keys_wanted: int) -> list[dict[str, float]]:
    """The checkpoint's best-of-N and mean-of-N MSE per video, the first videos of the test split in order."""
    from toolkit.data.loader import eval_loader
    from toolkit.eval.evaluate import generate_samples
    from toolkit.model.inference import folded
    from toolkit.train.checkpoint import load_model

    model, cfg, _ = load_model(args.checkpoint)
    model = folded(model.to(memory_format=torch.channels_last) if cfg.train.channels_last else model)
    out = []
    loader = eval_loader(args.shards, "test", 16, args.n_past + args.n_future, num_workers=0, limit=keys_wanted)
    for batch in loader:
        frames, cond = batch.to("cpu")
        past, future = frames[:, :args.n_past], frames[:, args.n_past:args.n_past + args.n_future]
        preds = generate_samples(model, past, cond, batch.keys, cfg.train.seed, range(args.samples), args.n_future,
                                 None)
        errors = mse(preds.double(), future.double())  # [N, B]
        out += [{"best": float(e.min()), "mean": float(e.mean())} for e in errors.T]
    return out


def line(name: str, values: np.ndarray, psnr: bool = True) -> str:
    """MSE x 1e4, mean ± 95% over videos, and the PSNR of that mean (for errors, not for differences)."""
    half = 1.96 * values.std(ddof=1) / math.sqrt(len(values))
    text = f"{name:>24s}: {1e4 * values.mean():8.3f} ± {1e4 * half:.3f}"
    return text + (f"  (PSNR of the mean {-10 * math.log10(values.mean()):.2f} dB)" if psnr else "")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--world", choices=["pushing", "shapes"], default="pushing")
    p.add_argument("--videos", type=int, default=100)
    p.add_argument("--samples", type=int, default=10)
    p.add_argument("--n-past", type=int, default=2)
    p.add_argument("--n-future", type=int, default=10)
    p.add_argument("--seed", type=int, default=0, help="the dataset seed (cvae synth --seed)")
    p.add_argument("--checkpoint", help="also score this model on the same videos")
    p.add_argument("--shards", help="the world's shards (with --checkpoint)")
    args = p.parse_args()
    rows = [oracle(args.world, sequence_seed(args.seed, "test", i), args) for i in range(args.videos)]
    print(f"# {args.world} world, test videos 0..{args.videos - 1}, {args.n_past} context -> {args.n_future} scored "
          f"frames, N = {args.samples}; MSE x 1e4 per video, mean ± 95% over videos")
    print(f"the future depends on the hidden state in {sum(r['depends'] for r in rows)} of {len(rows)} videos")
    for name in ("best", "mean", "pixel_mean"):
        print(line(f"resampled, {name}", np.array([r[name] for r in rows])))
    headroom = np.array([r["pixel_mean"] - r["best"] for r in rows])
    print(line("headroom", headroom, psnr=False))
    if args.checkpoint:
        model = model_errors(args, args.videos)
        for name in ("best", "mean"):
            print(line(f"model, {name} of {args.samples}", np.array([r[name] for r in model])))
        gain = np.array([r["mean"] - r["best"] for r in model])
        print(line("model's gain", gain, psnr=False))
        share = gain.mean() / headroom.mean()
        print(f"model's gain / headroom: {share:.2f}" + (" (> 1: its samples differ in what the hidden state does not "
                                                          "explain; best-of-N picks among them)" if share > 1 else ""))


if __name__ == "__main__":
    main()
