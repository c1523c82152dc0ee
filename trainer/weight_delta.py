"""Mean |Δw|: how far fine-tuning moved the weights from the base model, averaged over every parameter element (the
reference study used it to explain why FTICL generalizes better: it moves the weights less).

Under ZeRO-3 each rank snapshots only its own partition of every parameter (`ds_tensor`, 1/world of the model) at
step 0, in host memory and in `base_weights/` of the run folder (so a resumed run still measures against the base),
and at each eval point sums |w - w0| over its partition; one all-reduce of [sum, count] gives the mean. Below ZeRO-3
every rank holds the whole model and measures it alone."""
from __future__ import annotations

from pathlib import Path

import torch

from data_prep.disk import write_atomic
from trainer.dist import Dist


def _local(p: torch.nn.Parameter) -> tuple[torch.Tensor, int]:
    """This rank's elements of a parameter and how many of them are real (a ZeRO-3 partition is padded at its end)."""
    if hasattr(p, "ds_tensor"):
        part = p.ds_tensor  # DeepSpeed partitions over the parameter's own process group (MiCS: a sub-group)
        start = part.numel() * int(torch.distributed.get_rank(group=getattr(p, "ds_process_group", None)))
        return part.view(-1), max(0, min(part.numel(), p.ds_numel - start))
    return p.data.view(-1), p.numel()


class WeightDelta:
    def __init__(self, run_dir: Path, dist: Dist):
        self.path = Path(run_dir) / "base_weights" / f"rank{dist.rank}_of{dist.world}.pt"
        self.device = dist.device
        self.base: dict[str, torch.Tensor] | None = None

    def snapshot(self, model) -> None:
        """Copy this rank's share of the base weights to host memory and to the run folder."""
        self.base = {}
        for name, p in model.named_parameters():
            local, n = _local(p)
            self.base[name] = local[:n].detach().to("cpu", copy=True)
        write_atomic(self.path, self._save)

    def _save(self, path: Path) -> None:
        """torch.save through a Python file: a full disk is then an OSError (ENOSPC) that write_atomic names, not
        the zip writer's RuntimeError."""
        with open(path, "wb") as f:
            torch.save(self.base, f)

    def load(self) -> bool:
        """On resume: the snapshot this rank wrote at step 0 (False when missing, e.g. another world size)."""
        if not self.path.is_file():
            return False
        self.base = torch.load(self.path, map_location="cpu", weights_only=True)
        return True

    @torch.no_grad()
    def measure(self, model) -> float:
        """Mean |w - w0| over all parameter elements of the model (all ranks call this together)."""
        device = self.device
        sums = torch.zeros(2, dtype=torch.float64, device=device)
        sharded = False
        for name, p in model.named_parameters():
            local, n = _local(p)
            sharded |= hasattr(p, "ds_tensor")
            base = self.base[name].to(local.device, non_blocking=True)
            sums[0] += (local[:n].float() - base.float()).abs().sum().to(device, torch.float64)
            sums[1] += n
        if sharded and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
            torch.distributed.all_reduce(sums)
        return (sums[0] / sums[1]).item()
