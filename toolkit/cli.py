"""The `cvae` command: thin argparse front end, one function call per subcommand.

Bad input raises `ToolkitError`; it is printed as `error: ...` and the process exits with status 2 (`sweep local`
exits with status 1 when one of its runs did not finish).
"""

from __future__ import annotations

import argparse
import sys

from toolkit.errors import ToolkitError


def _synth(args: argparse.Namespace) -> None:
    from toolkit.data.worlds.synth import generate_dataset

    counts = {"train": args.train, "validate": args.validate, "test": args.test}
    generate_dataset(args.out, world=args.world, counts=counts, seed=args.seed, overwrite=args.overwrite,
                     progress=not args.quiet)


LEROBOT_OPTIONS = ("camera", "action_key", "state_key", "seq_len", "stride", "resize")


def _shards_convert(args: argparse.Namespace) -> None:
    from toolkit.data.shards.convert import convert
    from toolkit.data.sources.lerobot import LeRobotOptions

    given = {k: getattr(args, k) for k in LEROBOT_OPTIONS if getattr(args, k) is not None}
    lerobot = LeRobotOptions(**given) if given or args.format == "lerobot" else None
    convert(args.src, args.out, fmt=args.format, maxcount=args.maxcount, encoding=args.encoding,
            overwrite=args.overwrite, progress=not args.quiet, val_from_train=args.val_from_train,
            workers=args.workers, lerobot=lerobot)


def _shards_verify(args: argparse.Namespace) -> None:
    from toolkit.data.shards.verify import verify_shards

    verify_shards(args.out, progress=not args.quiet)


def _train(args: argparse.Namespace) -> None:
    from toolkit.config import load_config
    from toolkit.train.loop import train

    train(load_config(args.recipe, args.overrides))


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
            seed=args.seed, fps=args.fps, strip=args.strip)


def _plot(args: argparse.Namespace) -> None:
    from toolkit.eval.plots import plot

    plot(args.paths, args.out)


def _weights_fetch(args: argparse.Namespace) -> None:
    from toolkit.eval.weights import fetch

    fetch(args.names, dest=args.dest, base_url=args.base_url, progress=not args.quiet)


def _weights_list(args: argparse.Namespace) -> None:
    from toolkit.eval.weights import list_weights

    list_weights(args.dest)


def _sweep_local(args: argparse.Namespace) -> None:
    from toolkit.sweep.runner import local_sweep

    extra = args.overrides[1:] if args.overrides[:1] == ["--"] else args.overrides
    rows = local_sweep(args.sweep, args.out, max_runs=args.max_runs, accelerate_config=args.accelerate_config,
                       extra=extra, seed=args.seed, seeds=args.seeds, part=args.part)
    unfinished = [r["name"] for r in rows if r["status"] != "done"]
    if unfinished:
        print(f"error: {len(unfinished)} of {len(rows)} run(s) did not finish: {', '.join(unfinished)}",
              file=sys.stderr)
        sys.exit(1)


def _add_synth(sub) -> None:
    s = sub.add_parser("synth", help="generate the embedded dataset in the BAIR processed_data folder layout")
    s.add_argument("--out", required=True, help="output root (gets train/, validate/, test/)")
    s.add_argument("--world", choices=["pushing", "shapes"], default="pushing",
                   help="pushing: action-conditioned robot-pushing world; shapes: unconditional moving digits")
    s.add_argument("--train", type=int, default=1000, help="training sequences")
    s.add_argument("--validate", type=int, default=100, help="validation sequences")
    s.add_argument("--test", type=int, default=100, help="test sequences")
    s.add_argument("--seed", type=int, default=0, help="base seed; every sequence is seeded from it")
    s.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=_synth)


CONVERT_HELP = """sources (--format):
  folders   BAIR processed_data folders: SRC/{split}/traj_*/{k}/{0..29}.png + actions.csv, endeffector_positions.csv
  tfrecord  the original BAIR TFRecords: a folder SRC/{split}/*.tfrecords, or BAIR's tar itself, read as a stream
            without extracting it: a file (bair_robot_pushing_dataset_v0.tar), an http(s) URL or - for stdin;
            the shards are those of the extracted folder
  lerobot   a LeRobot v3 dataset directory (meta/info.json, data/ parquet, videos/ mp4; needs the 'lerobot'
            extra: pip install 'cvae-video[lerobot]'): sequences of --seq-len frames of one camera every
            --stride frames of each episode, resized to 64x64, cond = the --action-key and --state-key features

examples:
  cvae shards convert bair_robot_pushing_dataset_v0.tar shards/bair --format tfrecord --val-from-train 256 --workers 2
  cvae shards convert ~/lerobot/pusht shards/pusht --format lerobot --camera observation.image --seq-len 30"""


def _add_convert(sh) -> None:
    from toolkit.data.shards.inputs import FORMATS
    from toolkit.data.sources.lerobot_meta import RESIZE

    c = sh.add_parser("convert", help="pack BAIR folders, TFRecords (or BAIR's tar) or a LeRobot dataset into "
                                      "WebDataset tar shards + manifest", epilog=CONVERT_HELP,
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("src", help="source: a folder, BAIR's tar (file, http(s) URL or -) or a LeRobot dataset")
    c.add_argument("out", help="output directory for {split}-NNNNNN.tar and manifest.json")
    c.add_argument("--format", choices=FORMATS, default="folders", help="source format (default: folders)")
    c.add_argument("--maxcount", type=int, default=256, help="sequences per shard")
    c.add_argument("--encoding", choices=["png", "npy"], default="png",
                   help="png: one lossless PNG strip of all frames per sequence (default); npy: raw uint8 array")
    c.add_argument("--val-from-train", type=int, default=0, metavar="N",
                   help="write the last N training sequences (in source order) as a 'validate' split instead, "
                        "for sources without one (the BAIR TFRecords have train and test only)")
    c.add_argument("--workers", type=int, default=1, metavar="N",
                   help="processes that decode and encode sequences (default 1); any N gives the same shards")
    c.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    c.add_argument("--quiet", action="store_true", help="no progress bar")
    lr = c.add_argument_group("--format lerobot")
    lr.add_argument("--camera", help="video feature that becomes the frames (default: the first one)")
    lr.add_argument("--action-key", help="feature that becomes the first part of cond (default: action; '' none)")
    lr.add_argument("--state-key", help="feature that becomes the rest of cond (default: observation.state; '' none)")
    lr.add_argument("--seq-len", type=int, help="frames per sequence (default 30)")
    lr.add_argument("--stride", type=int, help="frames between an episode's sequence starts (default: --seq-len)")
    lr.add_argument("--resize", choices=RESIZE, help="crop: centre square, resized (default); stretch: whole frame")
    c.set_defaults(func=_shards_convert)


def _add_shards(sub) -> None:
    sh = sub.add_parser("shards", help="WebDataset shards: convert sources, verify shards").add_subparsers(
        dest="shards_command", required=True)
    _add_convert(sh)
    v = sh.add_parser("verify", help="re-read every shard and check it against the manifest")
    v.add_argument("out", help="shard directory (with manifest.json)")
    v.add_argument("--quiet", action="store_true", help="no progress bar")
    v.set_defaults(func=_shards_verify)


def _add_train(sub) -> None:
    from toolkit.config import keys_help  # config imports only the standard library and yaml

    t = sub.add_parser("train", help="train a model (run under `accelerate launch -m toolkit train ...` for DDP)",
                       description="Train from a YAML recipe; override any key with --section.key=value "
                                   "(e.g. --train.epochs=10 --model.prior=learned), as a W&B sweep agent passes them.",
                       epilog=keys_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("recipe", help="training recipe, e.g. recipes/train/demo.yaml")
    t.set_defaults(func=_train, accepts_overrides=True)


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


def _add_eval(sub) -> None:
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


def _add_predict_and_plot(sub) -> None:
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
    pr.set_defaults(func=_predict)
    pl = sub.add_parser("plot", help="training curves and PSNR per frame from run directories (no W&B needed)")
    pl.add_argument("paths", nargs="+", help="run directories (with metrics.jsonl) and/or eval report .json files")
    pl.add_argument("--out", help="output directory (default: the first run directory)")
    pl.set_defaults(func=_plot)


WEIGHTS_HELP = """files (cvae weights list shows where each one goes and whether it is there and verified):
  alexnet  torchvision's ImageNet AlexNet (alexnet-owt-7be5be79.pth): the LPIPS backbone
  i3d      TATS's I3D Kinetics-400 (i3d_pretrained_400.pt, from TF-Hub i3d-kinetics-400/1): FVD's features
default directory: $CVAE_WEIGHTS_DIR, else torch's hub cache ($TORCH_HOME/hub/checkpoints, ~/.cache/torch/...)"""


def _add_weights(sub) -> None:
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


def _add_sweep(sub) -> None:
    sw = sub.add_parser("sweep", help="W&B sweeps without a server").add_subparsers(dest="sweep_command", required=True)
    sl = sw.add_parser("local", help="run a sweep YAML's configurations one after another and tabulate them",
                       description="Extra --section.key=value overrides (e.g. fewer epochs) go after `--`.")
    sl.add_argument("sweep", help="sweep YAML, e.g. recipes/sweeps/demo_kl_tf_grid.yaml")
    sl.add_argument("--out", default="runs/sweep", help="directory for the runs and the results table")
    sl.add_argument("--max-runs", type=int, help="at most N configurations (random/bayes: N draws, default 10)")
    sl.add_argument("--accelerate-config", help="accelerate config for every run (default: as launch.sh picks)")
    sl.add_argument("--seed", type=int, default=0, help="seed for random/bayes draws")
    sl.add_argument("--seeds", type=int, default=0,
                    help="run every configuration with train.seed = 1..N; the table gives mean ± 95%% CI over them")
    sl.add_argument("--part", help="K/N: run only configurations K, K+N, ... (N runners share one --out)")
    sl.set_defaults(func=_sweep_local, accepts_overrides=True)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cvae", description="Stochastic video prediction with a conditional VAE (SVG).")
    sub = p.add_subparsers(dest="command", required=True)
    for add in (_add_synth, _add_shards, _add_train, _add_eval, _add_predict_and_plot, _add_sweep,
                _add_weights):
        add(sub)
    return p


def error_message(e: ToolkitError) -> str:
    """The user-facing message; errors re-raised from a DataLoader worker carry its traceback: keep the cause."""
    msg = str(e)
    if "Original Traceback" in msg:
        msg = msg.rstrip().splitlines()[-1].split(": ", 1)[-1]
    return msg


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "accepts_overrides", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.overrides = extra
    try:
        args.func(args)
    except ToolkitError as e:
        print(f"error: {error_message(e)}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
