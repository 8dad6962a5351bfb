"""The `cvae` command: thin argparse front end, one function call per subcommand.

Bad input raises `ToolkitError`; it is printed as `error: ...` and the process exits with status 2 (`sweep local`
exits with status 1 when one of its runs did not finish).
"""

from __future__ import annotations

import argparse
import sys

from toolkit.allocator import keep_freed_memory
from toolkit.cli_eval import add_eval, add_predict_and_plot, add_weights
from toolkit.errors import ToolkitError


def _synth(args: argparse.Namespace) -> None:
    from toolkit.data.worlds.synth import generate_dataset

    counts = {"train": args.train, "validate": args.validate, "test": args.test}
    generate_dataset(args.out, world=args.world, counts=counts, seed=args.seed, overwrite=args.overwrite,
                     progress=not args.quiet, workers=args.workers)


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
    s.add_argument("--workers", type=int, default=1, metavar="N",
                   help="processes that generate and write sequences (default 1); any N writes the same files")
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
    for add in (_add_synth, _add_shards, _add_train, add_eval, add_predict_and_plot, _add_sweep,
                add_weights):
        add(sub)
    return p


def error_message(e: ToolkitError) -> str:
    """The user-facing message; errors re-raised from a DataLoader worker carry its traceback: keep the cause."""
    msg = str(e)
    if "Original Traceback" in msg:
        msg = msg.rstrip().splitlines()[-1].split(": ", 1)[-1]
    return msg


def main(argv: list[str] | None = None) -> None:
    keep_freed_memory()
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
