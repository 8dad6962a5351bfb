"""Source jobs to encoded shard samples, in source order, in this process or in `workers` processes.

A *job* is a picklable callable (a `functools.partial` of a reader) that returns one `Sequence`: reading a folder,
decoding a TFRecord's Example, or handing over a sequence already read. Running it and encoding the sequence
(`codec.encode_sample`, deterministic) is the costly part of `shards convert`; with several workers the jobs run
in a process pool and the results come back in the order the jobs were made, so the shards are byte-identical
to a one-worker run. At most `AHEAD` jobs per worker are in flight: the reading side never runs far ahead (a
30 GB tar is not held in memory), and a bad input stops the conversion within a few jobs. Large byte strings in
a job (a BAIR record, 740 KB) reach the worker through a file in a scratch directory (`Handoff`): the pool's pipe
moves them in 64 KB pieces, which cost 1.2 ms more CPU per record than the page cache (measured with 2 workers).
"""

from __future__ import annotations

import collections
import contextlib
import multiprocessing
import os
import signal
import tempfile
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path
from typing import Callable, Iterable, Iterator, NamedTuple

from toolkit.data.sequence import Sequence
from toolkit.data.shards import codec

AHEAD = 4
"""Jobs in flight per worker."""
PRELOAD = ["toolkit.data.shards.pipeline", "toolkit.data.sources.tfrecord", "toolkit.data.sources.folders"]
"""Imported once by the forkserver, not by every worker (the readers the jobs call)."""
HANDOFF_BYTES = 1 << 16
"""Byte strings at least this long go to a worker through a scratch file."""


class Encoded(NamedTuple):
    """One sequence as a shard sample, with what the writer checks: shape (seq_len, frame shape, cond dim)."""
    key: str
    source: str
    shape: tuple
    sample: dict


def given(seq: Sequence) -> Sequence:
    """The job of a sequence read already (in this process): `partial(given, seq)`."""
    return seq


def encode_job(job: Callable, encoding: str) -> Encoded:
    """Run a job and encode its sequence."""
    seq = job()
    shape = (int(seq.frames.shape[0]), tuple(int(d) for d in seq.frames.shape[1:]), int(seq.cond.shape[1]))
    return Encoded(seq.key, seq.source, shape, codec.encode_sample(seq, encoding))


def _received(path: str) -> bytes:
    with open(path, "rb") as f:
        data = f.read()
    os.unlink(path)
    return data


class Handoff:
    """Bytes for a worker: pickling writes them to a file in `directory`, unpickling (in the worker) reads and
    deletes the file and gives back the bytes themselves."""

    def __init__(self, data: bytes, directory: Path) -> None:
        self.data, self.directory = data, directory

    def __reduce__(self):
        fd, path = tempfile.mkstemp(dir=self.directory, suffix=".bytes")
        with os.fdopen(fd, "wb") as f:
            f.write(self.data)
        return _received, (path,)


def _handed_off(job: Callable, scratch: Path | None) -> Callable:
    """The job with its large byte-string arguments wrapped in `Handoff`s."""
    if scratch is None or not isinstance(job, partial):
        return job
    args = [Handoff(a, scratch) if isinstance(a, bytes) and len(a) >= HANDOFF_BYTES else a for a in job.args]
    return partial(job.func, *args, **job.keywords)


def _init_worker() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the main process, which ends the pool


@contextlib.contextmanager
def worker_pool(workers: int) -> Iterator[ProcessPoolExecutor | None]:
    """A pool of `workers` processes (None for one worker: jobs run in this process), shut down on exit.

    Workers start from a forkserver where there is one (forking a process with threads can deadlock the child),
    preloading this module, so each starts in a fraction of a second. A worker that dies (killed, out of
    memory) breaks the pool: the conversion stops with BrokenProcessPool instead of waiting forever."""
    if workers <= 1:
        yield None
        return
    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    context = multiprocessing.get_context(method)
    if method == "forkserver":
        context.set_forkserver_preload(PRELOAD)
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker)
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def encode_all(items: Iterable[tuple], encoding: str, pool: ProcessPoolExecutor | None, workers: int,
               scratch: Path | None = None) -> Iterator[tuple]:
    """(tag, job, units) items -> (tag, units, Encoded), in the items' order; `pool` from `worker_pool(workers)`,
    `scratch` an existing directory for `Handoff` files (None: everything through the pipe).

    A job's error (DataError naming the file and record) is raised here, at that job's place in the order."""
    run = partial(encode_job, encoding=encoding)
    if pool is None:
        for tag, job, units in items:
            yield tag, units, run(job)
        return
    pending: collections.deque = collections.deque()
    for tag, job, units in items:
        pending.append((tag, units, pool.submit(run, _handed_off(job, scratch))))
        if len(pending) >= AHEAD * workers:
            tag_, units_, future = pending.popleft()
            yield tag_, units_, future.result()
    while pending:
        tag_, units_, future = pending.popleft()
        yield tag_, units_, future.result()
