"""Whole-step CUDA graphs, what a CPU can check: the step a graph captures (`graphs.static_step`: static buffers,
noise drawn outside, a tensor KL weight, in-place updates) trains exactly as the eager trainer step, and a run
asking for graphs where they cannot apply says why in one line and trains as without them. The capture itself
is tested on a GPU (tests/test_cuda.py)."""

import copy

import pytest
import torch
from accelerate import Accelerator

from conftest import run_toolkit, tiny_recipe
from toolkit.config import ModelConfig
from toolkit.model import SVG
from toolkit.train.graphs import make_capturable, static_step
from toolkit.train.runlog import read_metrics
from toolkit.train.step import Meter, make_optimizer, train_micro_batch


def test_the_captured_step_trains_as_the_eager_step():
    torch.manual_seed(0)
    cfg = ModelConfig(width=0.125, g_dim=16, z_dim=4, rnn_size=32, prior="learned")
    acc = Accelerator(cpu=True)
    models = [SVG(cfg, cond_dim=7, n_past=2).train() for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    optimizers = [make_optimizer(m, 2e-3, (0.9, 0.999), 0.0, acc.device) for m in models]
    models[0], optimizers[0] = acc.prepare(models[0], optimizers[0])  # the trainer's; the graph's is the inner one
    meters = [Meter(acc.device, 1) for _ in models]
    g = torch.Generator().manual_seed(1)
    frames, cond = torch.rand(3, 6, 3, 64, 64, generator=g), torch.randn(3, 6, 7, generator=g)
    static = (torch.empty_like(frames), torch.empty_like(cond), torch.empty(5, 3, 4), torch.zeros(()))
    for step in range(4):
        tf = step % 2 == 0
        torch.manual_seed(10 + step)  # the eager step draws the posterior noise inside the model
        train_micro_batch(acc, models[0], optimizers[0], meters[0], frames, cond, tf, 0.3, grad_clip=1.0)
        torch.manual_seed(10 + step)  # the captured step has it drawn into a buffer before the replay
        for buffer, value in zip(static, (frames, cond)):
            buffer.copy_(value)
        static[2].normal_()
        static[3].fill_(0.3)
        static_step(acc, models[1], optimizers[1], meters[1], *static[:2], tf, static[3], static[2], 1.0)
        for a, b in zip(models[0].parameters(), models[1].parameters()):
            assert torch.equal(a, b)
        assert torch.equal(meters[0].last, meters[1].last) and torch.equal(meters[0].epoch, meters[1].epoch)
    assert meters[1].read()["epoch_sums"][3] == 4  # four finite batches counted


def test_cuda_graphs_where_they_cannot_apply_say_why_and_train_eager(tmp_path, pushing_shards):
    runs = {}
    for graphs in (False, True):
        recipe = tiny_recipe(tmp_path / f"{graphs}.yaml", pushing_shards, tmp_path / f"run-{graphs}",
                             train={"epochs": 1, "epoch_size": 3, "cuda_graphs": graphs})
        proc = run_toolkit("train", str(recipe))
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[graphs] = [r for r in read_metrics(tmp_path / f"run-{graphs}") if r["kind"] in ("step", "val")]
        lines = [line for line in proc.stderr.splitlines() if "cuda_graphs" in line]
        assert len(lines) == (1 if graphs else 0), proc.stderr[-2000:]
    assert "needs a CUDA device" in lines[0] and "training eager" in lines[0]
    assert len(runs[True]) == 4 and runs[True] == runs[False]


@pytest.mark.parametrize("accum", [2])
def test_graphs_refuse_gradient_accumulation_in_one_line(accum):
    from toolkit.config import Config
    from toolkit.train.graphs import unavailable

    cfg = copy.deepcopy(Config())
    cfg.optim.grad_accum = accum

    class FakeCuda:
        device = torch.device("cuda")
        scaler = None
    assert "grad_accum" in unavailable(cfg, FakeCuda())
    cfg.optim.grad_accum = 1
    assert unavailable(cfg, FakeCuda()) is None
    FakeCuda.scaler = object()
    assert "fp16" in unavailable(cfg, FakeCuda())


def test_the_skip_counter_is_zeroed_in_place_where_a_captured_step_writes_it():
    meter = Meter(torch.device("cpu"), 1)
    captured = meter.skipped  # the memory a captured step's `skipped +=` was recorded with, replayed ever after
    meter.close_window(torch.tensor(float("nan")), scaled=False)  # a step skipped for a non-finite gradient
    assert meter.read()["skipped"] == 1
    captured += 1  # a replay after the read: the graph adds where it was captured, not to a new tensor
    assert meter.read()["skipped"] == 1 and meter.read()["skipped"] == 0


def test_every_learning_rate_becomes_a_tensor_on_its_parameters_device():
    # after a resume, param groups come from the checkpoint: floats (an eager run saved them) or CPU tensors
    # (accelerate loads optimizer.bin with map_location="cpu"); fused Adam reads a CPU tensor lr on the host,
    # which a graph freezes at its capture. "meta" stands in for the GPU: the only second device on a CPU.
    groups = [{"params": [torch.nn.Parameter(torch.zeros(2, device=device))], "lr": lr}
              for device, lr in (("cpu", 1e-3), ("cpu", torch.tensor(2e-3)), ("meta", torch.tensor(3e-3)),
                                 ("meta", 4e-3))]
    optimizer = torch.optim.Adam(groups)
    cpu_tensor = optimizer.param_groups[1]["lr"]
    make_capturable(optimizer)
    for group, device in zip(optimizer.param_groups, ("cpu", "cpu", "meta", "meta")):
        assert isinstance(group["lr"], torch.Tensor) and group["lr"].device.type == device and group["capturable"]
        assert group["lr"].dtype == torch.float32
    assert [float(g["lr"]) for g in optimizer.param_groups[:2]] == pytest.approx([1e-3, 2e-3], rel=1e-7)
    assert optimizer.param_groups[1]["lr"] is cpu_tensor  # already in place: kept, so set_learning_rate fills it
