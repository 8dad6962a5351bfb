"""The `cvae eval`, `predict`, `plot` and `weights` subcommands' parsers (the evaluation side of `toolkit/cli.py`).

Cheap to import, as cli.py: argparse here, every heavy import inside the function a subcommand calls.
"""

from __future__ import annotations

import argparse

from toolkit.errors import ToolkitError


def _eval(args: argparse.Namespace) -> None:
    if args.compare:
        from toolkit.eval.compare import compare, format_comparison

        print(format_comparison(compare(*[side.split(",") for side in args.compare])))
        return
    if not args.checkpoint or not args.shards:
        raise ToolkitError("cvae eval needs a CHECKPOINT and --shards (or --compare A.json B.json)")
    from toolkit.eval.report import eval_checkpoint

    eval_checkpoint(args.checkpoint, args.shards, args.split, protocol=args.protocol, samples=args.samples,
                    n_future=args.n_future, batch_size=args.batch_size, num_workers=args.num_workers, limit=args.limit,
                    seed=args.seed, out=args.json, precision=args.precision,
                    skip=tuple(filter(None, args.skip.split(","))), lpips_weights=args.lpips_weights,
                    i3d_weights=args.i3d_weights)


def _predict(args: argparse.Namespace) -> None:
    from toolkit.eval.predict import predict

    predict(args.checkpoint, args.input, args.out, samples=args.samples, n_future=args.n_future, key=args.key,
            seed=args.seed, fps=args.fps, strip=args.strip, sort=args.sort)


def _plot(args: argparse.Namespace) -> None:
    from toolkit.eval.plots import plot

    plot(args.paths, args.out)


def _weights_fetch(args: argparse.Namespace) -> None:
    from toolkit.eval.weights import fetch

    fetch(args.names, dest=args.dest, base_url=args.base_url, progress=not args.quiet)


def _weights_list(args: argparse.Namespace) -> None:
    from toolkit.eval.weights import list_weights

    list_weights(args.dest)


EVAL_HELP = """protocols (--protocol; docs/evaluation.md has the sources and which papers used which):
  lab    the model's own context/predicted frames (2 -> 10 for the lab recipes), --samples N (default 1)
  svg    SVG/SAVP/SRVP: 2 -> 28 frames, 100 samples, best per metric: PSNR, SSIM, LPIPS (AlexNet)
  act15  iVideoGPT/MaskViT action-conditioned: 1 -> 15 frames, 100 samples, best per metric (LPIPS VGG),
         FVD over all samples' 16-frame clips (needs a model trained with data.n_past=1)
  fvd    SRVP's FVD: 30 frames with the 2 context frames, one sample per video

examples:
  cvae eval runs/demo/checkpoints/best --shards shards/pushing --protocol svg --skip lpips
  cvae eval --compare runs/a/eval/best-test-svg-n100.json runs/b/eval/best-test-svg-n100.json
  cvae eval --compare s1.json,s2.json,s3.json t1.json,t2.json,t3.json     # several seeds per side"""


def add_eval(sub) -> None:
    from toolkit.eval.protocols import PROTOCOLS  # dataclasses only: cheap

    e = sub.add_parser("eval", help="evaluate a checkpoint under a protocol (PSNR/SSIM/LPIPS/FVD, best-of-N)",
                       description="Works alone or under `accelerate launch -m toolkit eval ...` (ranks share the "
                                   "split; the numbers do not depend on the number of ranks or the batch size).",
                       epilog=EVAL_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    e.add_argument("checkpoint", nargs="?", help="checkpoint directory, e.g. runs/demo/checkpoints/best")
    e.add_argument("--shards", help="shard directory or URL (with manifest.json)")
    e.add_argument("--split", default="test", help="split to evaluate (default: test)")
    e.add_argument("--protocol", choices=list(PROTOCOLS), default="lab", help="evaluation protocol (default: lab)")
    e.add_argument("--samples", type=int, help="samples per video (default: the protocol's; lab: 1); other "
                                               "values than a published protocol's are marked in the report")
    e.add_argument("--n-future", type=int, help="lab protocol only: frames to predict (default: the training's)")
    e.add_argument("--skip", default="", help="lpips,fvd: leave these metrics out (e.g. when their weights are "
                                              "absent); the report says so")
    e.add_argument("--lpips-weights", help="LPIPS backbone file (default: torchvision's cache; cvae weights list)")
    e.add_argument("--i3d-weights", help="I3D weights for FVD (default: see cvae weights list)")
    e.add_argument("--batch-size", type=int, default=16, help="videos per batch per process")
    e.add_argument("--num-workers", type=int, default=1, help="loader workers per process")
    e.add_argument("--limit", type=int, default=0, help="evaluate the first N videos only (0: all)")
    e.add_argument("--seed", type=int, default=None,
                   help="seed of the sampled latents (sample s of video KEY draws from (seed, KEY, s): any world "
                        "size or batch size agrees); default: the run's train.seed, as its validations")
    e.add_argument("--precision", choices=["no", "bf16", "fp16"], default="no",
                   help="no: float32 (the default, as validation during training); bf16/fp16: autocast")
    e.add_argument("--json", help="report path (default: RUN_DIR/eval/CHECKPOINT-SPLIT-PROTOCOL-nN.json)")
    e.add_argument("--compare", nargs=2, metavar=("A", "B"),
                   help="compare two sides' reports (each a file or comma-separated files, one per seed): paired "
                        "differences with 95%% intervals over videos and over seeds")
    e.set_defaults(func=_eval)


def add_predict_and_plot(sub) -> None:
    pr = sub.add_parser("predict", help="predict one sequence: GIF/MP4 + strip (ground truth | prediction | samples)")
    pr.add_argument("checkpoint", help="checkpoint directory")
    pr.add_argument("--input", required=True, help="a sequence folder (BAIR layout) or a shard .tar")
    pr.add_argument("--out", required=True, help="output video, .gif or .mp4")
    pr.add_argument("--strip", help="output strip PNG (default: --out with .png)")
    pr.add_argument("--samples", type=int, default=3, help="random samples shown beside the prediction")
    pr.add_argument("--n-future", type=int, help="frames to predict (default: the training n_future)")
    pr.add_argument("--key", help="sequence key inside a shard (default: the first)")
    pr.add_argument("--seed", type=int, default=0, help="seed of the sampled latents (as cvae eval --seed)")
    pr.add_argument("--fps", type=float, default=4.0, help="frames per second of the video")
    pr.add_argument("--sort", action="store_true", help="show the samples best first by PSNR (the worst last)")
    pr.set_defaults(func=_predict)
    pl = sub.add_parser("plot", help="training curves and PSNR per frame from run directories (no W&B needed)")
    pl.add_argument("paths", nargs="+", help="run directories (with metrics.jsonl) and/or eval report .json files")
    pl.add_argument("--out", help="output directory (default: the first run directory)")
    pl.set_defaults(func=_plot)


WEIGHTS_HELP = """files (cvae weights list shows where each one goes and whether it is there and verified):
  alexnet  torchvision's ImageNet AlexNet (alexnet-owt-7be5be79.pth): the LPIPS backbone
  i3d      TATS's I3D Kinetics-400 (i3d_pretrained_400.pt, from TF-Hub i3d-kinetics-400/1): FVD's features
default directory: $CVAE_WEIGHTS_DIR, else torch's hub cache ($TORCH_HOME/hub/checkpoints, ~/.cache/torch/...)"""


def add_weights(sub) -> None:
    w = sub.add_parser("weights", help="pretrained weight files of the LPIPS and FVD metrics: fetch, list",
                       epilog=WEIGHTS_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    ws = w.add_subparsers(dest="weights_command", required=True)
    f = ws.add_parser("fetch", help="download weight files, check them (sha256 / git blob id), write atomically",
                      epilog=WEIGHTS_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    f.add_argument("names", nargs="*", metavar="NAME", help="alexnet, i3d (default: all)")
    f.add_argument("--dest", help="directory to write to (default: where the metrics look, see below)")
    f.add_argument("--base-url", help="a mirror: fetch BASE_URL/FILE_NAME instead of each file's own URL")
    f.add_argument("--quiet", action="store_true", help="no progress line")
    f.set_defaults(func=_weights_fetch)
    ls = ws.add_parser("list", help="each weight file's path, whether it is present and verified, its sha256")
    ls.add_argument("--dest", help="directory to look in (default: where the metrics look)")
    ls.set_defaults(func=_weights_list)
