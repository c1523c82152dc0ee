"""Graceful stop on SIGTERM / SIGUSR1 (SLURM's warning before a time limit or preemption): the handler only sets a
flag; the loop puts it into the step's one collective (trainer/step_stats.py), so any rank signalled → all stop at
the same step boundary, then save a checkpoint and exit 0."""
from __future__ import annotations

import signal


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

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else "a signal on another rank"
