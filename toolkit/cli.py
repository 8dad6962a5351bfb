"""The `cvae` command: thin argparse front end, one function call per subcommand.

Bad input raises `ToolkitError`; it is printed as `error: ...` and the process exits with status 2.
"""

from __future__ import annotations

import argparse
import sys

from toolkit.errors import ToolkitError


def _synth(args: argparse.Namespace) -> None:
    from toolkit.data.synth import generate_dataset

    counts = {"train": args.train, "validate": args.validate, "test": args.test}
    generate_dataset(args.out, world=args.world, counts=counts, seed=args.seed, overwrite=args.overwrite,
                     progress=not args.quiet)


def _shards_convert(args: argparse.Namespace) -> None:
    from toolkit.data.shards import convert

    convert(args.src, args.out, fmt=args.format, maxcount=args.maxcount, encoding=args.encoding,
            overwrite=args.overwrite, progress=not args.quiet)


def _shards_verify(args: argparse.Namespace) -> None:
    from toolkit.data.verify import verify_shards

    verify_shards(args.out, progress=not args.quiet)


def _train(args: argparse.Namespace) -> None:
    from toolkit.config import load_config
    from toolkit.train import train

    train(load_config(args.recipe, args.overrides))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cvae", description="Stochastic video prediction with a conditional VAE (SVG).")
    sub = p.add_subparsers(dest="command", required=True)

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

    sh = sub.add_parser("shards", help="WebDataset shards: convert sources, verify shards").add_subparsers(
        dest="shards_command", required=True)
    c = sh.add_parser("convert", help="pack BAIR folders or TFRecords into WebDataset tar shards + manifest")
    c.add_argument("src", help="source root: processed_data folders ({split}/traj_*/{k}/) or TFRecords ({split}/*.tfrecords)")
    c.add_argument("out", help="output directory for {split}-NNNNNN.tar and manifest.json")
    c.add_argument("--format", choices=["folders", "tfrecord"], default="folders", help="source format")
    c.add_argument("--maxcount", type=int, default=256, help="sequences per shard")
    c.add_argument("--encoding", choices=["png", "npy"], default="png",
                   help="png: one lossless PNG strip of all frames per sequence (default); npy: raw uint8 array")
    c.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    c.add_argument("--quiet", action="store_true", help="no progress bar")
    c.set_defaults(func=_shards_convert)
    v = sh.add_parser("verify", help="re-read every shard and check it against the manifest")
    v.add_argument("out", help="shard directory (with manifest.json)")
    v.add_argument("--quiet", action="store_true", help="no progress bar")
    v.set_defaults(func=_shards_verify)
    t = sub.add_parser("train", help="train a model (run under `accelerate launch -m toolkit train ...` for DDP)",
                       description="Train from a YAML recipe; override any key with --section.key=value "
                                   "(e.g. --train.epochs=10 --model.prior=learned), as a W&B sweep agent passes them.")
    t.add_argument("recipe", help="training recipe, e.g. recipes/train/demo.yaml")
    t.set_defaults(func=_train, accepts_overrides=True)
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
