"""SIGTERM/SIGINT: finish the current optimizer step, save a checkpoint and return, on every rank alike.

A signal may reach only some ranks, and the ranks must stop after the same step. They agree through an
all-reduce of the local flag over a CPU (gloo) process group, which never waits for the GPU: each call starts
the all-reduce of this micro-batch's flag and reads the previous one's, so every rank sees the same flags one
micro-batch late, and the training stops at the first optimizer-step boundary after that. With one process
there is nothing to agree on.
"""

from __future__ import annotations

import signal

import torch
import torch.distributed as dist


class StopSignal:
    """Remembers a SIGTERM/SIGINT; `agreed()` says, identically on every rank, whether some rank got one."""

    def __init__(self, world_size: int) -> None:
        self.signum = 0
        self.previous = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}
        self.group = None
        if world_size > 1:  # all ranks create the group together; gloo keeps the flags off the GPU stream
            self.group = dist.group.WORLD if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")
        self.flag = torch.zeros((), dtype=torch.int32)
        self.pending = None
        self.seen = False

    def _handle(self, signum: int, frame) -> None:
        self.signum = signum
        signal.signal(signum, self.previous[signum])  # a second signal acts as it normally would

    def agreed(self) -> bool:
        """Call once per micro-batch on every rank: whether some rank had a signal one call ago (sticky)."""
        if self.group is None:
            self.seen = self.seen or self.signum != 0
            return self.seen
        if self.pending is not None:
            self.pending.wait()
            self.seen = self.seen or int(self.flag) > 0
        self.flag = torch.tensor(int(self.signum != 0), dtype=torch.int32)
        self.pending = dist.all_reduce(self.flag, group=self.group, async_op=True)
        return self.seen

    def restore(self) -> None:
        """Finish the all-reduce in flight (every rank has one) and put the previous handlers back."""
        if self.pending is not None:
            self.pending.wait()
            self.pending = None
        for s, handler in self.previous.items():
            signal.signal(s, handler)
