"""Per-domain loss and perplexity, token-weighted and summed across ranks. Every rank runs every forward (ZeRO-3
gathers parameters collectively); per-token losses are reduced inside the loop, never stored as full logits."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from trainer.data import eval_batches


def token_losses(model, tokens: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy per position: [batch, seq_len - 1], fp32."""
    logits = model(input_ids=tokens).logits[:, :-1].float()
    return F.cross_entropy(logits.transpose(1, 2), tokens[:, 1:], reduction="none")


@torch.no_grad()
def evaluate(model, eval_sets: dict, rank: int, world: int, micro_batch: int,
             max_samples: int | None, device: torch.device) -> dict[str, dict[str, float]]:
    was_training = model.training
    model.eval()
    sums = torch.zeros(len(eval_sets), 2, dtype=torch.float64, device=device)  # [loss sum, token count]
    for i, ds in enumerate(eval_sets.values()):
        for tokens, weight in eval_batches(ds, rank, world, micro_batch, max_samples):
            losses = token_losses(model, tokens.to(device))
            w = weight.to(device)[:, None].expand_as(losses)
            sums[i, 0] += (losses.double() * w).sum()
            sums[i, 1] += w.sum()
    if world > 1:
        torch.distributed.all_reduce(sums)
    model.train(was_training)
    out = {}
    for i, name in enumerate(eval_sets):
        loss = (sums[i, 0] / sums[i, 1]).item()
        out[name] = {"loss": loss, "ppl": math.exp(min(loss, 80.0)), "tokens": int(sums[i, 1].item())}
    return out
