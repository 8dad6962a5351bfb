"""ATen operations per training step, counted with a TorchDispatchMode.

    python benchmarks/ops.py                       # tiny and full lab model, teacher forcing on and off
    python benchmarks/ops.py --models tiny --json runs/ops.json

One step is exactly the trainer's (`train.step.train_micro_batch` under Accelerate: forward, backward,
gradient-norm clipping, fused Adam), on a fixed random batch of `--batch` sequences of 12 frames, after one
untimed step (so the optimizer state exists). Every ATen call that reaches the dispatcher is counted, in the
forward, the backward and the optimizer. Views (`view`, `t`, `as_strided` ... : no kernel) are counted apart,
and so are allocations (`empty` ...) and in-place metadata changes (`squeeze_` ...), which launch nothing:
`kernels` is what a GPU would launch one kernel (or more) for. Per-step BatchNorm runs in the form a GPU uses
(one statistics reduction per layer, `step_norm.per_step_batch_norm`) unless `--cpu-form`, which counts the
one-call-per-time-step form a CPU uses. The LSTMs run oneDNN's RNN here (one op per layer); a GPU's cuDNN
RNN is one op per layer too. The launch overhead of a step on a GPU is proportional to
`kernels` (about 5-10 us each), which is why the count is the yardstick of the GPU step's launch-bound time.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
MODELS = {"tiny": dict(width=0.125, g_dim=32, z_dim=8, rnn_size=64), "full": dict()}


NO_KERNEL = {"empty", "empty_strided", "empty_like", "new_empty", "new_empty_strided", "squeeze_", "unsqueeze_",
             "t_", "transpose_", "as_strided_", "detach_", "set_", "_unsafe_view", "promote_types", "result_type",
             "scalar_tensor", "_record_function_enter_new", "_record_function_exit"}
"""Ops that allocate, change metadata or mark the profiler only (a Python scalar's `scalar_tensor` is a
kernel argument on a GPU)."""


class OpCounter(TorchDispatchMode):
    """Counts ATen calls by name; views and kernel-less ops apart."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: collections.Counter = collections.Counter()
        self.views = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in NO_KERNEL or (not func._schema.is_mutable and _is_view(func)):
            self.views += 1
        else:
            self.ops[name] += 1
        return func(*args, **(kwargs or {}))


def _is_view(func) -> bool:
    return any(a.alias_info is not None and not a.alias_info.is_write for a in func._schema.returns)


def count_step(name: str, teacher_forcing: bool, batch: int, precision: str) -> dict:
    """Ops of one trainer step of model `name` (after one warm-up step)."""
    from accelerate import Accelerator

    from toolkit.config import ModelConfig
    from toolkit.model import SVG
    from toolkit.train.step import Meter, make_optimizer, train_micro_batch
    try:
        from toolkit.train.batchnorm import track_running_stats
    except ImportError:  # before the trainer left them alone
        track_running_stats = None

    torch.manual_seed(0)
    model = SVG(ModelConfig(**MODELS[name]), cond_dim=7, n_past=2).train().to(memory_format=torch.channels_last)
    if track_running_stats is not None:  # as the trainer with its default train.bn_batches > 0
        track_running_stats(model, False)
    acc = Accelerator(cpu=True, mixed_precision=precision)
    optimizer = make_optimizer(model, 2e-3, (0.9, 0.999), 0.0, acc.device)
    model, optimizer = acc.prepare(model, optimizer)
    meter = Meter(acc.device, acc.num_processes)
    g = torch.Generator().manual_seed(1)
    frames, cond = torch.rand(batch, 12, 3, 64, 64, generator=g), torch.randn(batch, 12, 7, generator=g)
    train_micro_batch(acc, model, optimizer, meter, frames, cond, teacher_forcing, 1e-4, 1.0)
    with OpCounter() as counter:
        train_micro_batch(acc, model, optimizer, meter, frames, cond, teacher_forcing, 1e-4, 1.0)
    return {"kernels": sum(counter.ops.values()), "views": counter.views, "top": counter.ops.most_common(12)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="tiny,full", help="comma-separated: tiny, full")
    p.add_argument("--batch", type=int, default=12)
    p.add_argument("--cpu-form", action="store_true", help="per-step BatchNorm as one call per time step")
    p.add_argument("--precision", choices=["bf16", "no"], default="bf16",
                   help="bf16 autocast (as on a GPU; its weight casts are ops too) or float32")
    p.add_argument("--top", action="store_true", help="also print the most frequent ops")
    p.add_argument("--json", help="write the counts here")
    args = p.parse_args()
    from toolkit.model import step_norm, vgg64

    if not args.cpu_form:  # the GPU's form on any device (a global of vgg64: its callers look it up there)
        vgg64.batch_norm = lambda bn, x, groups: (bn(x) if groups == 1 or not bn.training
                                                  else step_norm.per_step_batch_norm(bn, x, groups))
    torch.set_num_threads(1)
    print(f"# torch {torch.__version__}, batch {args.batch} x 12 frames, BatchNorm in the "
          f"{'CPU' if args.cpu_form else 'GPU'} form, precision {args.precision}; one trainer step (forward, backward, "
          "clip, fused Adam)")
    print(f"{'model':<6} {'teacher forcing':<16} {'kernels':>8} {'views, allocations':>19}")
    results = {}
    for name in args.models.split(","):
        for tf in (True, False):
            r = count_step(name, tf, args.batch, args.precision)
            results[f"{name}/{'tf' if tf else 'free'}"] = r
            print(f"{name:<6} {'on' if tf else 'off':<16} {r['kernels']:8d} {r['views']:19d}", flush=True)
            if args.top:
                print("   " + ", ".join(f"{k} {v}" for k, v in r["top"]))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
