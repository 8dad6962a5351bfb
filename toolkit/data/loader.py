"""WebDataset loaders over the shards: a training stream and an evaluation stream, per rank.

Both yield `Batch(frames, cond, keys)`: frames uint8 [B, T, 3, H, W], cond float32 [B, T, D] (D = 0 when
unconditional), keys the sequence keys. T is the window length (n_past + n_future). `Batch.to(device)` moves
it (from pinned memory when the device is a GPU, without blocking) and only then converts the frames to float
in [0, 1]: a quarter of the bytes cross the bus and the worker never touches floats.

Training (`train_loader`): shards are split by rank (rank r takes shards r, r+W, ...; with fewer shards than
ranks every rank uses all of them), each worker resamples shards from its rank's subset with replacement,
shuffles samples in a buffer and batches without partial batches; `with_epoch` cuts the infinite stream to
exactly `n_batches` per rank, so every rank takes the same number of steps and DDP cannot hang. All
randomness is seeded from (seed, epoch, rank, worker): a given epoch yields the same batches whenever it is
run, which is what makes resuming a run exact. Do not pass these loaders through `accelerator.prepare()`.

Evaluation (`eval_loader`): ordered and complete. Shards are split by worker; sequences are split by rank on
their global index in the manifest order (index % world_size == rank), so the ranks together see every
sequence exactly once; the last batch may be partial.
"""

from __future__ import annotations

import functools
import hashlib
import multiprocessing
import os
import random
import signal
import warnings
from typing import Iterator, NamedTuple

import torch
import webdataset as wds
from torch.utils.data import get_worker_info

from toolkit.data.shards import codec
from toolkit.data.shards.manifest import Manifest, read_manifest
from toolkit.errors import DataError


class Batch(NamedTuple):
    frames: torch.Tensor
    cond: torch.Tensor
    keys: list[str]

    def to(self, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
        """(frames float32 [B, T, 3, H, W] in [0, 1], cond float32 [B, T, D]) on `device`."""
        frames = self.frames.to(device, non_blocking=True).float().div_(255.0)
        return frames, self.cond.to(device, non_blocking=True)


def _worker() -> tuple[int, int]:
    info = get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


def _rng(*parts) -> random.Random:
    """A random.Random seeded from the parts and the current worker id (stable across processes/runs)."""
    digest = hashlib.sha256(repr((*parts, _worker()[0])).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "little"))


def _resampled(urls: list[str], seed: tuple) -> Iterator[dict]:
    rng = _rng(*seed, "shards")
    while True:
        yield {"url": rng.choice(urls)}


def _shuffled(src: Iterator[dict], bufsize: int, seed: tuple) -> Iterator[dict]:
    return wds.shuffle(bufsize, initial=bufsize, rng=_rng(*seed, "shuffle"))(src)


def _ordered(urls: list[str]) -> Iterator[dict]:
    worker, num_workers = _worker()
    for i, url in enumerate(urls):
        if i % num_workers == worker:
            yield {"url": url}


def _select(src: Iterator[dict], offsets: dict[str, int], rank: int, world_size: int, limit: int) -> Iterator[dict]:
    """Keep the samples of this rank: global index (manifest order) % world_size == rank, below limit."""
    url, index = None, 0
    for sample in src:
        if sample["__url__"] != url:
            url, index = sample["__url__"], 0
        g = offsets[url] + index
        index += 1
        if g % world_size == rank and (limit <= 0 or g < limit):
            yield sample


def _decode(src: Iterator[dict], m: Manifest, window: int, use_cond: bool, seed: tuple | None) -> Iterator[tuple]:
    """Raw samples -> (frames uint8 [T,3,H,W], cond [T,D], key); random window start when seed is given."""
    rng = _rng(*seed, "window") if seed is not None else None
    frames_name = codec.frames_entry(m.encoding)
    for sample in src:
        where = f"{sample.get('__url__', '?')}: sample '{sample.get('__key__', '?')}'"
        start = rng.randint(0, m.seq_len - window) if rng is not None else 0
        try:  # only the window's frames are decoded
            frames = codec.decode_frames(sample[frames_name], m.encoding, m.seq_len, start, window)
            cond = codec.decode_cond(sample[codec.COND_ENTRY])
        except KeyError as e:
            raise DataError(f"{where}: missing entry {e}") from None
        except (ValueError, RuntimeError) as e:
            raise DataError(f"{where}: {e}") from None
        cond = cond[start:start + window] if use_cond else cond.new_zeros(window, 0)
        yield frames, cond, sample["__key__"]


def _shard_error(exn: Exception) -> bool:
    """WebDataset's handler hook: a shard that cannot be opened or read is a DataError naming it (WebDataset
    appends the shard's URL to the exception's args)."""
    url = next((a for a in reversed(exn.args) if isinstance(a, str) and a), "?")
    raise DataError(f"{url}: unreadable shard ({type(exn).__name__}: {exn.args[0] if exn.args else exn})") from None


def _collate(items: list[tuple]) -> Batch:
    return Batch(torch.stack([f for f, _, _ in items]), torch.stack([c for _, c, _ in items]), [k for _, _, k in items])


def _worker_init(worker_id: int) -> None:
    """Workers leave the trainer's process group and ignore Ctrl-C: a signal sent to the whole group (a terminal's
    Ctrl-C, `timeout`, `kill -TERM -PGID`) reaches only the trainer, which stops at a step boundary and shuts its
    workers down itself; a SIGTERM addressed to a worker (multiprocessing's clean-up at exit) still ends it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.setpgrp()


def _loader(pipeline: wds.DataPipeline, num_workers: int, ready: int = 2) -> wds.WebLoader:
    """A WebLoader whose DataLoader draws its (unused) base seed from a private generator, not the global RNG,
    so creating a loader never shifts the training randomness (exact resume).

    Workers start from a forkserver where available: forking the trainer itself (which runs gloo/NCCL, tqdm and
    loader feeder threads) can deadlock the child on a lock held by another thread at fork time, which hung a
    2-rank run here once. The forkserver is single-threaded and preloads this module, so a worker still starts
    in about 0.1 s (the first one per process in ~2 s). As with `spawn`, a script that starts training must
    guard its entry point with `if __name__ == "__main__":`, and every worker imports the script's module again
    (CPython 3.11's forkserver does not preload `__main__`), so keep its module-level imports light, as
    `python -m toolkit` does.
    """
    kwargs = {}
    if num_workers > 0:
        kwargs["prefetch_factor"] = max(2, -(-ready // num_workers))  # batches kept ready, over all workers
        if "forkserver" in multiprocessing.get_all_start_methods():
            multiprocessing.set_forkserver_preload(["__main__", "toolkit.data.loader"])  # __main__: where supported
            kwargs["multiprocessing_context"] = "forkserver"
    return wds.WebLoader(pipeline, batch_size=None, num_workers=num_workers, worker_init_fn=_worker_init,
                         generator=torch.Generator().manual_seed(0), pin_memory=torch.cuda.is_available(), **kwargs)


def _check_window(m: Manifest, window: int) -> None:
    if not 1 <= window <= m.seq_len:
        raise DataError(f"window of {window} frames does not fit sequences of {m.seq_len} frames")


def train_loader(m: Manifest | str, split: str, batch_size: int, n_batches: int, window: int, *, seed: int,
                 epoch: int, rank: int = 0, world_size: int = 1, num_workers: int = 2, shuffle_buffer: int = 256,
                 random_window: bool = False, use_cond: bool = True, ready: int = 2) -> wds.WebLoader:
    """Exactly `n_batches` shuffled training batches for this rank and epoch (deterministic given the seeds).

    At least `ready` batches are kept decoded ahead: a SIGTERM sent to every process (a scheduler's
    preemption) ends the workers too, and the trainer still needs the batches up to its next optimizer step.
    """
    m = read_manifest(m) if isinstance(m, str) else m
    _check_window(m, window)
    urls = m.urls(split)
    if len(urls) >= world_size:
        urls = urls[rank::world_size]
    else:
        warnings.warn(f"split '{split}' has {len(urls)} shard(s) for {world_size} ranks: every rank resamples all "
                      "shards (batches are not disjoint across ranks); write more, smaller shards (--maxcount)")
    s = (seed, epoch, rank)
    pipeline = wds.DataPipeline(
        functools.partial(_resampled, urls, s),
        wds.tarfile_to_samples(handler=_shard_error),
        functools.partial(_shuffled, bufsize=shuffle_buffer, seed=s),
        functools.partial(_decode, m=m, window=window, use_cond=use_cond, seed=s if random_window else None),
        wds.batched(batch_size, collation_fn=_collate, partial=False),
    )
    return _loader(pipeline, num_workers, ready).with_epoch(n_batches)


def eval_loader(m: Manifest | str, split: str, batch_size: int, window: int, *, rank: int = 0, world_size: int = 1,
                num_workers: int = 1, limit: int = 0, use_cond: bool = True) -> wds.WebLoader:
    """This rank's share of the first `limit` (0: all) sequences of `split`, in order, first `window` frames."""
    m = read_manifest(m) if isinstance(m, str) else m
    _check_window(m, window)
    urls = m.urls(split)
    offsets, total = {}, 0
    for url, shard in zip(urls, m.split(split)["shards"]):
        offsets[url] = total
        total += shard["count"]
    pipeline = wds.DataPipeline(
        functools.partial(_ordered, urls),
        wds.tarfile_to_samples(handler=_shard_error),
        functools.partial(_select, offsets=offsets, rank=rank, world_size=world_size, limit=limit),
        functools.partial(_decode, m=m, window=window, use_cond=use_cond, seed=None),
        wds.batched(batch_size, collation_fn=_collate, partial=True),
    )
    return _loader(pipeline, min(num_workers, len(urls)))
