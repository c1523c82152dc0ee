"""Next-token cross-entropy without full-vocabulary logits.

A causal LM's own loss materialises [tokens, vocab] logits, upcasts them to fp32 and keeps them for backward: for a
128K vocabulary at micro-batch 8 × seq 2048 that is ~8 GB per copy, more than the rest of a 1B model's activations.
Here the head's matmul and the cross-entropy run chunk by chunk over the tokens, so at most one chunk of logits
(≤ CHUNK_BYTES in fp32) exists at a time:
  - training: liger-kernel's fused linear cross-entropy on CUDA when it is installed, else `LinearCrossEntropy`
    (pure torch, the same method: the gradients are computed in the forward, chunk by chunk);
  - eval: `head_token_losses`, per-token losses with no graph.

The loss is computed inside the output head's own forward (`LossHead`, the model's nn.Linear with a second forward
mode), so ZeRO-3 gathers the head's weight for it exactly as it does for the plain logits, and parameter names,
checkpoints and `generate` are unchanged. `use_head_loss` switches a loaded model over (model.loss_impl).
"""
from __future__ import annotations

import functools
import importlib.util

import torch
import torch.nn.functional as F
from torch import nn

from data_prep.shards import IGNORE
from trainer.selection import select_top

CHUNK_BYTES = 256 * 2**20  # fp32 logits of one chunk


def chunk_rows(vocab: int) -> int:
    return max(16, CHUNK_BYTES // (4 * vocab))


class LinearCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of `hidden @ weight.T` against `targets` over the targets that are not IGNORE (as HF's
    causal-LM loss). The gradients are computed in the forward, chunk by chunk, and only scaled in the backward, so
    no chunk's logits outlive its iteration. Gradient of the weight accumulates in fp32."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        valid = targets != IGNORE
        n_valid = valid.sum()
        grad_hidden = torch.empty_like(hidden)
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        loss_sum = torch.zeros((), dtype=torch.float32, device=hidden.device)
        step = chunk_rows(weight.shape[0])
        for start in range(0, hidden.shape[0], step):
            h, t, v = hidden[start:start + step], targets[start:start + step], valid[start:start + step]
            logits = (h @ weight.T).float()
            lse = logits.logsumexp(-1)
            picked = logits.gather(1, t.clamp(min=0)[:, None])[:, 0]
            loss_sum += ((lse - picked) * v).sum()
            grad = logits.sub_(lse[:, None]).exp_()  # softmax, in place of the logits
            grad[torch.arange(len(t), device=t.device), t.clamp(min=0)] -= 1
            grad = (grad * v[:, None]).to(hidden.dtype)
            grad_hidden[start:start + step] = grad @ weight
            grad_weight += (grad.T @ h).float()
        scale = 1.0 / n_valid  # as HF: 0 targets give NaN, which the bad-loss policy catches
        ctx.save_for_backward(grad_hidden, grad_weight, scale)
        ctx.weight_dtype = weight.dtype
        return loss_sum * scale

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        grad_hidden, grad_weight, scale = ctx.saved_tensors
        g = grad_out * scale
        return (grad_hidden * g).to(grad_hidden.dtype), (grad_weight * g).to(ctx.weight_dtype), None


@torch.no_grad()
def head_token_losses(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-target cross-entropy, fp32, 0 where the target is IGNORE: [N] from hidden [N, H], targets [N]."""
    out = torch.empty(targets.shape, dtype=torch.float32, device=hidden.device)
    step = chunk_rows(weight.shape[0])
    for start in range(0, hidden.shape[0], step):
        logits = (hidden[start:start + step] @ weight.T).float()
        out[start:start + step] = F.cross_entropy(logits, targets[start:start + step], reduction="none",
                                                  ignore_index=IGNORE)
    return out


def _liger_loss():
    from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

    return liger_fused_linear_cross_entropy


class LossHead(nn.Linear):
    """The model's output head with a second mode: given `targets`, it returns the loss instead of the logits
    (`per_token`: the [N] losses of eval, else the mean over the targets). `kernel` is "liger" or "chunked"."""
    kernel = "chunked"

    def forward(self, hidden: torch.Tensor, targets: torch.Tensor | None = None, per_token: bool = False,
                select: tuple[torch.Tensor, float] | None = None):
        if targets is None:
            return super().forward(hidden)
        hidden, targets = hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1)
        if select is not None:  # Rho-1: the loss over the kept targets only (inside this forward: one ZeRO gather)
            base, fraction = select
            now = head_token_losses(hidden.detach(), self.weight, targets)
            targets = targets.masked_fill(~select_top(now, base.reshape(-1), targets != IGNORE, fraction), IGNORE)
        if per_token:
            return head_token_losses(hidden, self.weight, targets)
        if not torch.is_grad_enabled():
            return head_token_losses(hidden, self.weight, targets).sum() / (targets != IGNORE).sum()
        if self.kernel == "liger":
            return _liger_loss()(hidden, self.weight, targets, ignore_index=IGNORE)
        return LinearCrossEntropy.apply(hidden, self.weight, targets)


def head_loss_supported(model) -> str | None:
    """Why the chunked head loss cannot replace this model's own (None when it can): the head must be a bias-free
    nn.Linear applied to the base model's last hidden state, with no logit scaling or soft-capping."""
    config = model.config
    head = model.get_output_embeddings()
    if type(head) not in (nn.Linear, LossHead) or head.bias is not None:
        return f"its output head is {type(head).__name__}{' with a bias' if head.bias is not None else ''}"
    for attr in ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale"):
        if getattr(config, attr, None) not in (None, 1, 1.0):
            return f"its config sets {attr}"
    if not hasattr(model, getattr(model, "base_model_prefix", "")):
        return "it has no base model attribute"
    return None


def choose_kernel(impl: str) -> str:
    """`auto`: liger on CUDA where liger-kernel is installed, else chunked."""
    if impl != "auto":
        return impl
    if torch.cuda.is_available() and importlib.util.find_spec("liger_kernel"):
        return "liger"
    return "chunked"


def use_head_loss(model, impl: str) -> str:
    """Switch the model's loss to the head loss per `impl` (auto, chunked, liger, plain). Returns the line to log."""
    if impl == "plain":
        return "loss: the model's own (full logits)"
    why_not = head_loss_supported(model)
    if why_not:
        if impl != "auto":
            raise ValueError(f"model.loss_impl={impl} cannot apply to this model: {why_not}")
        return f"loss: the model's own (full logits; no chunked loss: {why_not})"
    kernel = choose_kernel(impl)
    head = model.get_output_embeddings()
    head.__class__ = LossHead
    head.kernel = kernel
    plain_forward = type(model).forward
    model.forward = functools.wraps(plain_forward)(functools.partial(_forward_with_head_loss, model, plain_forward))
    vocab = getattr(head.weight, "ds_shape", head.weight.shape)[0]  # ZeRO-3 keeps only a partition in .shape
    if kernel == "liger":
        return "loss: liger-kernel fused linear cross-entropy"
    return f"loss: chunked linear cross-entropy ({chunk_rows(vocab)} tokens a chunk)"


def _forward_with_head_loss(model, plain_forward, *args, labels=None, per_token: bool = False,
                            select: tuple[torch.Tensor, float] | None = None, **kwargs):
    """The model's forward, except that with `labels` the loss comes from the head (shifted as HF shifts: position i
    predicts label i + 1) and no logits are returned. `per_token` returns [batch, seq - 1] losses as `.loss`;
    `select` = (the base model's [batch, seq - 1] losses, fraction) keeps the top fraction by excess loss (Rho-1)."""
    from transformers.modeling_outputs import CausalLMOutputWithPast

    if labels is None:
        return plain_forward(model, *args, **kwargs)
    for unused in ("use_cache", "logits_to_keep", "return_dict"):
        kwargs.pop(unused, None)
    hidden = getattr(model, model.base_model_prefix)(*args, use_cache=False, **kwargs).last_hidden_state
    loss = model.get_output_embeddings()(hidden[:, :-1], targets=labels[:, 1:], per_token=per_token, select=select)
    if per_token:
        loss = loss.view(labels.shape[0], -1)
    return CausalLMOutputWithPast(loss=loss)
