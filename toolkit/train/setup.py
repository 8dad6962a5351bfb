"""The set-up of a training run: check the data against the recipe before any step, build the model and the
optimizer under Accelerate, restore a checkpoint, open the run log and the W&B run.

Everything a run reads is checked here, so a mistake costs seconds, not a validation hours later: every split
the run uses exists in the manifest and has sequences, its local shard files exist, the window fits the
sequences, and the conditioning the model expects matches the shards.
"""

from __future__ import annotations

import inspect
import os
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import (AutocastKwargs, DistributedDataParallelKwargs, broadcast_object_list, gather_object,
                               set_seed)

from toolkit.config import Config, dump_yaml, to_dict
from toolkit.data.shards.manifest import Manifest, read_manifest
from toolkit.errors import DataError, ToolkitError
from toolkit.fsutil import atomic_write_text
from toolkit.model import SVG
from toolkit.train import checkpoint as ckpt
from toolkit.train import graphs
from toolkit.train.batchnorm import track_running_stats
from toolkit.train.resume import continuation_warnings, resume_target
from toolkit.train.runlog import RunLog
from toolkit.train.step import Meter, make_optimizer
from toolkit.train.stop import StopSignal
from toolkit.train.wandb_run import init_wandb, new_run_id, resolve_wandb_mode, store_run_id, stored_run_id


@dataclass
class Run:
    """What the steps of the loop share."""
    cfg: Config
    accelerator: Accelerator
    model: torch.nn.Module
    """As prepared by accelerate (DDP-wrapped with several processes)."""
    unwrapped: SVG
    optimizer: torch.optim.Optimizer
    manifest: Manifest
    run_dir: Path
    meta: dict
    """What rebuilds the model from a checkpoint: the resolved config and the model's arguments."""
    state: ckpt.TrainState
    log: RunLog
    stop: StopSignal
    meter: Meter
    """The step's device-side sums (one for the whole run: a CUDA graph updates these very tensors)."""
    val_protocol: object = None
    """`train.val_protocol` bound to the model and the data (`eval.protocols.bind`)."""
    val_scorers: tuple = ()
    """Its LPIPS and FVD scorers (`eval.report.load_scorers`), loaded once."""
    graphed: graphs.GraphedStep | None = None
    """The CUDA-graph step (`train.cuda_graphs`), or None: eager."""
    stopped: bool = False
    last_val: dict | None = field(default=None)
    """The last validation of this process (mean metrics and count)."""

    def say(self, message: str) -> None:
        if self.accelerator.is_main_process:
            print(message, flush=True)


def check_data(cfg: Config, manifest: Manifest) -> None:
    """Raise DataError now for anything in the data that would stop the run later."""
    d = cfg.data
    window = d.n_past + d.n_future
    if window > manifest.seq_len:
        raise DataError(f"{d.shards}: n_past {d.n_past} + n_future {d.n_future} = {window} frames do not fit its "
                        f"sequences of {manifest.seq_len} frames")
    for split in dict.fromkeys((d.train_split, d.val_split)):
        if manifest.count(split) < 1:
            raise DataError(f"{d.shards}: split '{split}' has no sequences")
        if "://" not in d.shards and not d.shards.startswith("pipe:"):
            missing = [u for u in manifest.urls(split) if not os.path.exists(u)]
            if missing:
                raise DataError(f"{missing[0]}: shard listed in the manifest not found ({len(missing)} missing)")


def validation_scoring(cfg: Config, manifest: Manifest, args: dict, device: torch.device) -> tuple:
    """(the bound validation protocol, its scorers): a protocol that does not fit, or a weight file it needs
    and does not find, stops the run before its first step."""
    from toolkit.eval.protocols import bind, get_protocol
    from toolkit.eval.report import load_scorers

    protocol = bind(get_protocol(cfg.train.val_protocol), cfg.data.n_past, cfg.data.n_future, args["cond_dim"],
                    manifest.seq_len, samples=cfg.train.val_samples or None)
    return protocol, load_scorers(protocol, device, (), None, None)[:2]


def model_args(cfg: Config, manifest: Manifest) -> dict:
    """SVG's arguments besides its config: conditioning as the shards provide it (none with data.use_cond off)."""
    return {"cond_dim": manifest.cond_dim if cfg.data.use_cond else 0, "n_past": cfg.data.n_past, "channels": 3}


def build_model(cfg: Config, args: dict) -> SVG:
    """The SVG of the recipe (seeded: identical on every rank), in channels-last format and compiled as asked.

    `train.compile` compiles the encoder and the decoder in place (`Module.compile`), so the state dict and the
    checkpoints are those of the eager model. Not the LSTMs: each is one cuDNN/oneDNN call over all steps,
    nothing for inductor to fuse, and their step-at-a-time calls would only add recompilations.
    """
    set_seed(cfg.train.seed)
    model = SVG(cfg.model, **args)
    track_running_stats(model, cfg.train.bn_batches == 0)  # otherwise re-estimated before they are read
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if cfg.train.compile:
        model.encoder.compile()
        model.decoder.compile()
    return model


def ddp_kwargs() -> DistributedDataParallelKwargs:
    """DDP without buffer syncs at every forward. torch 2.13 deprecated `broadcast_buffers` (a FutureWarning
    per rank) for `forward_sync_buffers`, which accelerate's dataclass does not know yet (its `to_kwargs` only
    passes known fields), so where torch has the new name this handler passes it instead. Its one
    difference, a buffer sync when DDP is made, is harmless: every rank starts from the same weights."""
    kwargs = DistributedDataParallelKwargs(broadcast_buffers=False)
    if "forward_sync_buffers" in inspect.signature(torch.nn.parallel.DistributedDataParallel).parameters:
        def new_name() -> dict:
            return {"forward_sync_buffers": False}
        kwargs.to_kwargs = new_name
    return kwargs


def make_accelerator(cfg: Config, wandb_mode: str) -> Accelerator:
    """The run's Accelerator. DDP does not broadcast BatchNorm buffers at every forward (broadcast_buffers=False):
    training does not read them, and they are re-estimated and averaged over the ranks before every validation
    and checkpoint (batchnorm.py). For CUDA graphs, autocast keeps no weight-cast cache and NCCL's asynchronous
    error handling is off before the process group is made, as PyTorch's DDP-with-graphs notes require."""
    handlers = [ddp_kwargs()]
    if cfg.train.cuda_graphs:
        handlers.append(AutocastKwargs(cache_enabled=False))
        if torch.cuda.is_available():
            os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "0")
    mp = None if cfg.train.mixed_precision == "auto" else cfg.train.mixed_precision
    acc = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=mp,
                      gradient_accumulation_steps=cfg.optim.grad_accum,
                      log_with=None if wandb_mode == "disabled" else "wandb", kwargs_handlers=handlers)
    if acc.mixed_precision == "fp16" and acc.device.type == "cpu":
        warnings.warn("fp16 mixed precision needs a GPU; on CPU accelerate trains in float32 (use bf16 on CPU)")
    return acc


def prepare_training(cfg: Config, acc: Accelerator, model: SVG, graphed: bool):
    """(model, optimizer) under Accelerate; with CUDA graphs a capturable Adam and DDP made on a side stream."""
    optimizer = make_optimizer(model, cfg.optim.lr, (cfg.optim.beta1, cfg.optim.beta2), cfg.optim.weight_decay,
                               acc.device, capturable=graphed)
    if not graphed:
        return acc.prepare(model, optimizer)
    side = torch.cuda.Stream(acc.device)
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        prepared = acc.prepare(model, optimizer)
    torch.cuda.current_stream().wait_stream(side)
    return prepared


def setup(cfg: Config) -> Run:
    """Check the data, build or restore the run; every rank returns the same state."""
    wandb_mode = resolve_wandb_mode(cfg.wandb.mode)
    acc = make_accelerator(cfg, wandb_mode)
    no_graphs = graphs.unavailable(cfg, acc) if cfg.train.cuda_graphs else None
    manifest = agreed(acc, lambda: _read_and_check(cfg))
    fresh_id = broadcast_object_list([new_run_id()])[0]  # W&B's id of a new run, and `{run_id}` of its dir
    run_dir = Path(cfg.train.run_dir.replace("{run_id}", fresh_id))
    resume, skipped = agreed(acc, lambda: _find_resume(cfg.train.resume, run_dir), main_only=True)
    meta = {"config": to_dict(cfg), "model_args": model_args(cfg, manifest)}
    model, optimizer = prepare_training(cfg, acc, build_model(cfg, meta["model_args"]),
                                        cfg.train.cuda_graphs and no_graphs is None)
    set_seed(cfg.train.seed, device_specific=True)  # distinct noise per rank; identical weights from above
    state = ckpt.TrainState()
    if resume is not None:
        state = ckpt.load_checkpoint(acc, resume, meta)
        skipped += continuation_warnings(resume, acc.num_processes, acc.process_index, acc.mixed_precision,
                                         meta["config"])
        if state.step_in_epoch > cfg.train.epoch_size or state.step_in_epoch % cfg.optim.grad_accum:
            raise ToolkitError(f"{resume} stopped after batch {state.step_in_epoch} of an epoch, which does not fit "
                               f"train.epoch_size={cfg.train.epoch_size} with optim.grad_accum="
                               f"{cfg.optim.grad_accum}; resume with the values it was trained with")
    run = Run(cfg, acc, model, acc.unwrap_model(model), optimizer, manifest, run_dir, meta, state,
              RunLog(run_dir, acc.is_main_process), StopSignal(acc.num_processes), Meter(acc.device, acc.num_processes),
              *agreed(acc, lambda: validation_scoring(cfg, manifest, meta["model_args"], acc.device)))
    if cfg.train.cuda_graphs and no_graphs is None:
        d = cfg.data
        run.graphed = graphs.GraphedStep(acc, model, optimizer, run.meter, cfg.optim.grad_clip,
                                         (d.n_past + d.n_future - 1, d.batch_size, cfg.model.z_dim))
    if no_graphs:
        skipped.append(f"{no_graphs}; training eager")
    for message in skipped:
        if acc.is_main_process or "rank" in message:
            print(f"warning: {message}", file=sys.stderr, flush=True)
    _open_run_dir(run, fresh_id, wandb_mode)
    run.say(f"{run.unwrapped.param_count():,} parameters, {acc.num_processes} process(es) "
            f"({acc.distributed_type.value}) on {acc.device.type}, mixed precision {acc.mixed_precision}, "
            f"run dir {run_dir}"
            + (f", resuming from {resume}" if resume else ""))
    return run


def _find_resume(resume: str, run_dir: Path) -> tuple[Path | None, list[str]]:
    """Put back a checkpoint whose replacement a kill interrupted, then choose the one to resume from."""
    ckpt.clean_temporaries(run_dir)
    return resume_target(resume, run_dir)


def _read_and_check(cfg: Config) -> Manifest:
    manifest = read_manifest(cfg.data.shards)
    check_data(cfg, manifest)
    return manifest


def agreed(acc: Accelerator, fn, main_only: bool = False):
    """fn() on every rank (its own result each), or on the main process only (its result shared). An error on
    any rank is raised on every rank, so no rank waits forever in a collective for one that stopped: the
    failing rank re-raises its own exception, the others a ToolkitError with its message."""
    result, error = None, None
    if not main_only or acc.is_main_process:
        try:
            result = fn()
        except Exception as e:  # passed on to the other ranks, then re-raised here
            error = e
    if acc.num_processes == 1:
        if error is not None:
            raise error
        return result
    message = "" if error is None else (str(error) if isinstance(error, ToolkitError) else f"{type(error).__name__}: "
                                         f"{error}")
    if main_only:
        result, message = broadcast_object_list([result, message])
    else:
        message = next((m for m in gather_object([message]) if m), "")
    if error is not None:
        raise error
    if message:
        raise ToolkitError(message)
    return result


def _open_run_dir(run: Run, fresh_id: str, wandb_mode: str) -> None:
    """config.yaml, the run log cut back to the checkpoint, the W&B run id (main process), then W&B."""
    state, acc = run.state, run.accelerator

    def write() -> None:
        run.run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run.run_dir / "config.yaml", dump_yaml(run.cfg))
        run.log.truncate(state.global_step, state.validation_due)  # drop what a killed run logged after it
        state.wandb_run_id = state.wandb_run_id or stored_run_id(run.run_dir) or fresh_id
        store_run_id(run.run_dir, state.wandb_run_id)

    agreed(acc, write, main_only=True)  # a failure here (a read-only run dir, say) stops every rank
    if acc.log_with:
        init_wandb(acc, run.cfg.wandb, run.run_dir, state.wandb_run_id, wandb_mode, run.meta["config"])


def param_checksum(model: torch.nn.Module) -> list[float]:
    """Two float64 sums over all parameters (plain and position-weighted): equal on ranks in sync."""
    flat = torch.cat([p.detach().double().flatten() for p in model.parameters()]).cpu()
    return [float(flat.sum()), float((flat * torch.arange(1, flat.numel() + 1, dtype=torch.float64)).sum())]
