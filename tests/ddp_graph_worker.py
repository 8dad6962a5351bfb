"""Whole-step CUDA graphs around an explicit DistributedDataParallel model, in a world-size-1 NCCL group, against
the same DDP model trained eager (run by tests/test_cuda.py in a process of its own: the NCCL group and its
threads must not outlive the test). Set up as the trainer does for graphs with DDP (PyTorch's "Usage with
DistributedDataParallel"): NCCL's asynchronous error handling off before the group exists, DDP built on a side
stream, 11 eager DDP steps per mode before each capture (`graphs.WARMUP`). Accelerate is not the one wrapping
here: with one process it would not (`Accelerator.multi_device` needs more than one), so the DDP this test
exercises is made explicitly. Exits 0 after the comparison passed; an AssertionError otherwise.

    PYTHONPATH=. python tests/ddp_graph_worker.py
"""

from __future__ import annotations

import os
import sys
from functools import partial
from pathlib import Path

import torch
import torch.distributed as dist
from accelerate import Accelerator
from accelerate.utils import AutocastKwargs
from torch.nn.parallel import DistributedDataParallel

sys.path.insert(0, str(Path(__file__).resolve().parent))
from graph_steps import NOISE_SHAPE, assert_graphed_trains_as_eager, run_steps, tiny_svg  # noqa: E402

from toolkit.launcher import free_port  # noqa: E402
from toolkit.train.graphs import GraphedStep  # noqa: E402
from toolkit.train.step import Meter, make_optimizer, train_micro_batch  # noqa: E402


def ddp_on_a_side_stream(model: torch.nn.Module) -> DistributedDataParallel:
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        wrapped = DistributedDataParallel(model, device_ids=[torch.cuda.current_device()], broadcast_buffers=False)
    torch.cuda.current_stream().wait_stream(side)
    return wrapped


def main() -> None:
    os.environ["TORCH_NCCL_ASYNC_ERROR_HANDLING"] = "0"  # before the group exists, as the DDP-with-graphs notes say
    # one process: accelerate only moves the model and runs its forward under bf16 autocast (weight cache off)
    acc = Accelerator(mixed_precision="bf16", kwargs_handlers=[AutocastKwargs(cache_enabled=False)])
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1,
                            device_id=torch.device("cuda", torch.cuda.current_device()))
    nccl = torch.cuda.nccl.version()  # a tuple in recent torch, an int in older ones
    print(f"NCCL {'.'.join(map(str, nccl)) if isinstance(nccl, tuple) else nccl}, world size "
          f"{dist.get_world_size()}", flush=True)
    runs, initial = {}, [p.detach().double() for p in tiny_svg().parameters()]
    for graphed in (False, True):
        model = tiny_svg()
        model, optimizer = acc.prepare(model, make_optimizer(model, 0.0, (0.9, 0.999), 0.0, acc.device,
                                                             capturable=graphed))
        ddp, meter = ddp_on_a_side_stream(model), Meter(acc.device, 1)
        step = (GraphedStep(acc, ddp, optimizer, meter, 1.0, NOISE_SHAPE) if graphed else
                partial(train_micro_batch, acc, ddp, optimizer, meter, grad_clip=1.0))
        runs[graphed] = run_steps(step, optimizer, meter, acc.device)
    assert len(step.graphs) == 2 and isinstance(ddp, DistributedDataParallel)
    assert_graphed_trains_as_eager(runs[False], runs[True], initial)
    dist.destroy_process_group()
    print("graphed DDP steps train as eager DDP steps", flush=True)


if __name__ == "__main__":
    main()
