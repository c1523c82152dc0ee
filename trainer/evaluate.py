"""Per-domain loss and perplexity, token-weighted and summed across ranks. Every rank runs every forward (ZeRO-3
gathers parameters collectively); per-token losses are reduced inside the loop, never stored as full logits.

With `per_token=True` each domain's per-token losses and targets are also assembled in sample order on rank 0
([samples, seq_len-1], one reduce each), for the token statistics against the base model, which only rank 0 computes.
A model whose head computes the loss (trainer/loss.py) gives the per-token losses chunk by chunk, without logits."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from analysis.metrics import perplexity
from trainer.data import IGNORE, eval_batches
from trainer.dist import Dist
from trainer.loss import LossHead


def token_losses(model, input_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy per position: [batch, seq_len - 1], fp32; 0 where the label is IGNORE."""
    if isinstance(getattr(model, "module", model).get_output_embeddings(), LossHead):
        return model(input_ids=input_ids, labels=labels, per_token=True).loss
    logits = model(input_ids=input_ids).logits[:, :-1]
    b, n, vocab = logits.shape
    return F.cross_entropy(logits.reshape(b * n, vocab).float(), labels[:, 1:].reshape(-1), reduction="none",
                           ignore_index=IGNORE).view(b, n)


@dataclass
class DomainEval:
    loss: float
    ppl: float
    tokens: int
    targets: np.ndarray | None = None  # [samples, seq_len-1] int64, sample order
    losses: np.ndarray | None = None  # [samples, seq_len-1] float32


@torch.no_grad()
def evaluate(model, eval_sets: dict, dist: Dist, micro_batch: int, max_samples: int | None,
             per_token: bool = False) -> dict[str, DomainEval]:
    device = dist.device
    was_training = model.training
    model.eval()
    sums = torch.zeros(len(eval_sets), 2, dtype=torch.float64, device=device)  # [loss sum, token count]
    full: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for i, (name, ds) in enumerate(eval_sets.items()):
        n = ds.num_samples if max_samples is None else min(ds.num_samples, max_samples)
        for batch, weight, idx in eval_batches(ds, dist, micro_batch, max_samples):
            input_ids = batch["input_ids"].to(device, non_blocking=True)
            labels = batch["labels"].to(device, non_blocking=True)
            losses = token_losses(model, input_ids, labels)
            w = weight.to(device)[:, None] * (labels[:, 1:] != IGNORE)  # padding rows and IGNORE labels weigh 0
            sums[i, 0] += (losses.double() * w).sum()
            sums[i, 1] += w.sum()
            if per_token:
                if name not in full:  # on the device: NCCL reduces device tensors only
                    shape = (n, losses.shape[1])
                    full[name] = (torch.zeros(shape, dtype=torch.int64, device=device),
                                  torch.zeros(shape, dtype=torch.float32, device=device))
                real = (weight > 0).to(device)
                rows = idx.to(device)[real]
                full[name][0][rows] = labels[real, 1:]
                full[name][1][rows] = losses[real].float()
    if dist.world > 1:
        torch.distributed.all_reduce(sums)
        for targets, losses in full.values():  # only rank 0 summarizes them: a reduce, not an all-reduce
            torch.distributed.reduce(targets, dst=0)
            torch.distributed.reduce(losses, dst=0)
    model.train(was_training)
    sums = sums.cpu()
    out = {}
    for i, name in enumerate(eval_sets):
        loss = (sums[i, 0] / sums[i, 1]).item()
        targets, losses = full.get(name, (None, None)) if dist.main else (None, None)
        out[name] = DomainEval(loss, perplexity(loss), int(sums[i, 1].item()),
                               None if targets is None else targets.cpu().numpy(),
                               None if losses is None else losses.cpu().numpy())
    return out
