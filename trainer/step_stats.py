"""The numbers of one optimizer step, kept on the device until the step is done.

Each micro-batch adds its loss and whether it is bad (not finite, or a spike above `spike_factor` × the running mean)
without a host sync. Before the step's last backward, `agree` all-reduces [loss sum, bad count, stop flag] in one
collective on the device and returns the factor for that last loss: 1, or NaN when any rank saw a bad loss. NaN
gradients make DeepSpeed skip the update by itself (its overflow check: no parameter change, no LR step), on every
rank at once. The result is copied to pinned host memory behind the collective, so `result()` after `engine.step()`
waits for nothing but that copy.
"""
from __future__ import annotations

import torch

from trainer.dist import Dist


class StepStats:
    def __init__(self, dist: Dist, spike_factor: float | None):
        device, self.world, self.spike_factor = dist.device, dist.world, spike_factor
        self.buf = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, bad micro-batches, stop flag
        self.host = torch.zeros(3, dtype=torch.float64, pin_memory=device.type == "cuda")
        self.copied = torch.cuda.Event() if device.type == "cuda" else None
        self.threshold: float | None = None

    def begin(self, loss_ema: float | None) -> None:
        self.buf.zero_()
        self.threshold = self.spike_factor * loss_ema if self.spike_factor and loss_ema else None

    def add(self, loss: torch.Tensor) -> None:
        value = loss.detach().double()
        bad = ~torch.isfinite(value)
        if self.threshold is not None:
            bad = bad | (value > self.threshold)
        self.buf[0] += torch.where(bad, 0.0, value)
        self.buf[1] += bad.double()

    def agree(self, stop: bool) -> torch.Tensor:
        """The step's one collective; returns the factor (1 or NaN) for the last micro-batch's loss."""
        self.buf[2].fill_(1.0 if stop else 0.0)
        if self.world > 1:
            torch.distributed.all_reduce(self.buf)
        self.host.copy_(self.buf, non_blocking=True)
        if self.copied is not None:
            self.copied.record()
        return torch.where(self.buf[1] > 0, float("nan"), 1.0).float()

    def result(self, micro_batches: int) -> tuple[float, int, bool]:
        """(mean loss over all ranks' micro-batches, bad micro-batches on all ranks, whether any rank must stop)."""
        if self.copied is not None:
            self.copied.synchronize()
        loss_sum, bad, stop = self.host.tolist()
        return loss_sum / (micro_batches * self.world), int(bad), stop > 0
