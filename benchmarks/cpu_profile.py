"""Where a CPU training step goes: the trainer's step on the tiny model (as `throughput.py` times it), profiled with
`torch.profiler`, its self CPU time grouped by kind of operation (convolutions, BatchNorm, activations, copies...).

    python benchmarks/cpu_profile.py [--teacher-forcing on|off] [--batch 12] [--steps 3] [--top 20]

One thread, after as many warm-up steps as profiled ones. Shares are of the profiled self CPU time, so they hold on
a busy machine roughly, not exactly: memory-bound copies and fills suffer more from a neighbour than convolutions.
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch.profiler import profile  # noqa: E402

from throughput import make_model, trainer_step  # noqa: E402

GROUPS = (  # (group, substrings of the ATen/autograd name), first match wins
    ("convolution backward", ("convolution_backward",)),
    ("convolution forward", ("convolution", "conv2d", "conv_transpose")),
    ("BatchNorm", ("batch_norm", "BlockBatchNorm")),
    ("leaky_relu backward", ("leaky_relu_backward",)),
    ("leaky_relu", ("leaky_relu",)),
    ("max-pooling", ("max_pool",)),
    ("copy_", ("aten::copy_",)),
    ("fill_", ("aten::fill_",)),
    ("cat", ("aten::cat",)),
    ("add (skip sums, gradient sums)", ("aten::add",)),  # aten::add_ too
    ("LSTM", ("lstm", "rnn")),
)


def group_of(name: str) -> str:
    return next((g for g, keys in GROUPS if any(k in name for k in keys)), "other")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher-forcing", choices=("on", "off"), default="on")
    p.add_argument("--batch", type=int, default=12)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--top", type=int, default=20, help="also print the N operations with the most self CPU time")
    args = p.parse_args()
    torch.set_num_threads(1)
    step = trainer_step(make_model("tiny", True), args.batch, args.teacher_forcing == "on")
    for _ in range(args.steps):
        step()
    with profile() as prof:
        for _ in range(args.steps):
            step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    shares = collections.Counter()
    for e in events:
        shares[group_of(e.key)] += e.self_cpu_time_total / total
    print(f"# tiny model, batch {args.batch}, teacher forcing {args.teacher_forcing}, {args.steps} steps, "
          f"1 thread, {total / args.steps / 1e6:.3f} s/step under the profiler")
    for name, share in shares.most_common():
        print(f"{name:24s} {100 * share:5.1f}%")
    if args.top:
        print(events.table(sort_by="self_cpu_time_total", row_limit=args.top, max_name_column_width=40))


if __name__ == "__main__":
    main()
