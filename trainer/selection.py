"""Rho-1-style selective language modelling (Lin et al. 2024, arXiv 2404.07965): train on the tokens whose loss is
furthest above the base model's, and drop the rest from the loss.

Per micro-batch, over its scored target positions p (label != -100):
    excess_p = loss_p (the model now) − base_p (the base model, from a scoring pass stored with the shards)
    keep the k = ceil(fraction · n) positions of largest excess (n: the scored positions; ties broken by position),
    loss = Σ_{p kept} loss_p / k.
Everything stays on the device: the ranks of the positions come from one sort, compared with k as a tensor, so no
count ever reaches the host (no sync per micro-batch). The output head applies it inside its own forward
(trainer/loss.py: LossHead), where the hidden states and the gathered head weight give both losses: the kept
targets keep their labels, the others become -100, and the chunked or fused loss takes the mean over the kept."""
from __future__ import annotations

import torch


def select_top(losses: torch.Tensor, base: torch.Tensor, scored: torch.Tensor, fraction: float) -> torch.Tensor:
    """The kept positions, a bool mask shaped like `losses` ([batch, seq_len-1]): the ceil(fraction · n) scored
    positions of largest excess loss over `base`."""
    excess = (losses.detach().float() - base.float()).masked_fill(~scored, float("-inf")).reshape(-1)
    order = torch.sort(excess, descending=True, stable=True).indices  # stable: ties in position order
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel(), device=order.device)
    k = torch.ceil(scored.sum() * fraction)
    return ((rank < k) & scored.reshape(-1)).view_as(losses)

