"""Whole-step CUDA graphs (`train.cuda_graphs`): one micro-batch captured and replayed as one graph.

The graph holds everything of a step: the forward, the backward (DDP's all-reduces included), gradient-norm
clipping, the meter's device-side sums and fused Adam's update, so a step costs one launch instead of a few
thousand (the eager step is launch-bound on a GPU at small batches). Following PyTorch's CUDA-graph notes
(`notes/cuda.rst`, "CUDA Graphs", and "Usage with DistributedDataParallel"):
- Static inputs: every batch is copied into buffers the graph reads (frames, cond); the posterior's noise is
  drawn into a buffer by the default CUDA generator *outside* the graph, so the graphs draw no random numbers
  and a checkpoint's RNG state is all a resumed run needs (eager and graphed steps draw the same numbers).
- The learning rate and the KL weight are device tensors filled before each replay; the teacher-forcing
  decision selects one of two graphs (teacher-forced, free-running), captured in one memory pool. They are
  never replayed concurrently, and whatever outlives a replay (weights, gradients, optimizer state, meter
  sums) lives outside the pool, so either graph can follow the other.
- Adam is fused and capturable with a tensor learning rate; gradients are zeroed inside the graph (they stay
  allocated, outside the pool); autocast runs with its weight-cast cache off (`AutocastKwargs`).
- Warm-up: each mode runs `WARMUP` eager steps (real training steps, on a side stream) before its capture;
  with DDP at least 11, as the DDP notes require, DDP is constructed on a side stream and NCCL's asynchronous
  error handling is off (`TORCH_NCCL_ASYNC_ERROR_HANDLING=0`, set before the process group exists).
- Capture mode "thread_local" (`CAPTURE_ERROR_MODE`), not the default "global": under "global" a potentially
  unsafe CUDA call from *any* thread during a capture (`cudaHostAlloc`, `cudaEventQuery`, `cudaMalloc`) fails
  or invalidates it, and the loader's pin-memory thread makes such calls whenever it pins a batch
  (`data/loader.py`: `pin_memory` on a GPU, with loader workers). "thread_local" still refuses them in the
  capturing thread, where they would break the graph; other threads work on their own (non-blocking) streams,
  which the capture neither records nor waits for. PyTorch's own captures (inductor's CUDA-graph trees) use
  "thread_local"; `torch.cuda.graph`'s documentation describes the three modes.
- Not with a gradient scaler (fp16: `GradScaler.step` synchronizes), gradient accumulation (the graph would
  change from step to step) or a CPU: `unavailable` says why in one line and the run stays eager.
"""

from __future__ import annotations

import math

import torch
from accelerate import Accelerator

from toolkit.train.step import Meter

CAPTURE_ERROR_MODE = "thread_local"
"""`torch.cuda.graph(capture_error_mode=...)`: only this thread's unsafe CUDA calls break a capture (above)."""

WARMUP = 11
"""Eager steps per teacher-forcing mode before its capture (PyTorch's DDP requirement; enough without DDP)."""


def unavailable(cfg, accelerator: Accelerator) -> str | None:
    """Why `train.cuda_graphs` cannot apply to this run (one line), or None."""
    if accelerator.device.type != "cuda":
        return f"train.cuda_graphs needs a CUDA device, this run is on {accelerator.device.type}"
    if cfg.optim.grad_accum > 1:
        return "train.cuda_graphs needs optim.grad_accum = 1 (accumulation changes the step from one batch to the next)"
    if accelerator.scaler is not None:
        return "train.cuda_graphs does not capture fp16's gradient scaler (its step synchronizes): use bf16"
    if cfg.train.compile:
        return "train.cuda_graphs and train.compile exclude each other (compile has its own CUDA graphs)"
    return None


def make_capturable(optimizer: torch.optim.Optimizer) -> None:
    """A float32 tensor learning rate on the parameters' device and `capturable` on every param group, also
    after a checkpoint's param groups replaced them: an eager run saved floats, and accelerate loads a graphed
    run's tensors onto the CPU (`map_location="cpu"`). Fused Adam reads a CPU tensor lr on the host, so a graph
    would keep the value it had at capture and the schedule would stop there. A tensor already in place is
    kept (`set_learning_rate` fills it)."""
    for group in optimizer.param_groups:
        group["lr"] = torch.as_tensor(group["lr"], dtype=torch.float32).to(group["params"][0].device)
        group["capturable"] = True


class GraphedStep:
    """`step(frames, cond, teacher_forcing, beta) -> True` (one optimizer step per micro-batch), graphed."""

    def __init__(self, accelerator: Accelerator, model, optimizer, meter: Meter, grad_clip: float,
                 noise_shape: tuple[int, ...]) -> None:
        self.acc, self.model, self.meter = accelerator, model, meter
        self.optimizer = optimizer.optimizer if hasattr(optimizer, "optimizer") else optimizer  # accelerate's
        self.max_norm = grad_clip if grad_clip > 0 else math.inf
        make_capturable(self.optimizer)
        device = accelerator.device
        self.noise = torch.zeros(noise_shape, device=device)
        self.beta = torch.zeros((), device=device)
        self.inputs: tuple[torch.Tensor, torch.Tensor] | None = None
        self.graphs: dict[bool, torch.cuda.CUDAGraph] = {}
        self.warm = {True: 0, False: 0}
        self.pool = None
        self.side = torch.cuda.Stream(device)

    def __call__(self, frames: torch.Tensor, cond: torch.Tensor, teacher_forcing: bool, beta: float) -> bool:
        if self.inputs is None:
            self.inputs = (torch.empty_like(frames), torch.empty_like(cond))
        self.inputs[0].copy_(frames, non_blocking=True)
        self.inputs[1].copy_(cond, non_blocking=True)
        self.noise.normal_()  # the default generator, outside the graph: what the eager step draws
        self.beta.fill_(beta)
        if teacher_forcing in self.graphs:
            self.graphs[teacher_forcing].replay()
        elif self.warm[teacher_forcing] < WARMUP:
            self._on_side_stream(lambda: self._body(teacher_forcing))
            self.warm[teacher_forcing] += 1
        else:
            self._capture(teacher_forcing)
            self.graphs[teacher_forcing].replay()
        return True

    def _on_side_stream(self, fn) -> None:
        self.side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.side):
            fn()
        torch.cuda.current_stream().wait_stream(self.side)

    def _capture(self, teacher_forcing: bool) -> None:
        graph = torch.cuda.CUDAGraph()
        torch.cuda.synchronize()
        with torch.cuda.graph(graph, pool=self.pool, capture_error_mode=CAPTURE_ERROR_MODE):
            self._body(teacher_forcing)
        self.pool = graph.pool()
        self.graphs[teacher_forcing] = graph
        if self.acc.is_main_process:
            mode = "teacher-forced" if teacher_forcing else "free-running"
            print(f"CUDA graphs: captured the {mode} step after {WARMUP} eager ones", flush=True)

    def _body(self, teacher_forcing: bool) -> None:
        frames, cond = self.inputs
        static_step(self.acc, self.model, self.optimizer, self.meter, frames, cond, teacher_forcing, self.beta,
                    self.noise, self.max_norm)


def static_step(accelerator: Accelerator, model, optimizer: torch.optim.Optimizer, meter: Meter,
                frames: torch.Tensor, cond: torch.Tensor, teacher_forcing: bool, beta: torch.Tensor,
                noise: torch.Tensor, max_norm: float) -> None:
    """One micro-batch as `train_micro_batch` without accumulation or a scaler, every value on the device and
    every update in place (what a graph captures): zeroed gradients, forward with the given noise and a tensor
    KL weight, backward, clipping, the meter, fused Adam (skipping a non-finite step on the device)."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    optimizer.zero_grad(set_to_none=False)
    out = model(frames, cond, teacher_forcing, beta, noise)
    (out["loss"] * meter.add(accelerator, out, teacher_forcing)).backward()
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    found, _ = meter.close_window(norm, scaled=False)
    optimizer.found_inf = found.float()
    optimizer.step()
    del optimizer.found_inf
