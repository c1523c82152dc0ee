"""Graceful stop on SIGTERM / SIGUSR1 (SLURM's warning before a time limit or preemption): the handler only sets a
flag; the loop checks it at each step boundary, agreed across ranks (any rank signalled → all stop), then saves a
checkpoint and exits 0."""
from __future__ import annotations

import signal

import torch


class StopRequest:
    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self):
        self.signum: int | None = None
        # SLURM signals every process of a job step, helpers included. multiprocessing's resource tracker (started
        # by mosaicml-streaming for its shared memory) dies of a USR1 it doesn't expect and then reports every segment
        # as leaked. Start it now with the signals ignored: an ignored disposition survives its exec.
        from multiprocessing import resource_tracker

        for s in self.SIGNALS:
            signal.signal(s, signal.SIG_IGN)
        resource_tracker.ensure_running()
        for s in self.SIGNALS:
            signal.signal(s, self._handle)

    def _handle(self, signum, _frame) -> None:
        self.signum = signum

    def agreed(self, world: int) -> bool:
        """True on every rank if any rank got a signal. One scalar all-reduce per step."""
        flag = torch.tensor([1.0 if self.signum else 0.0])
        if world > 1:
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else "a signal on another rank"
