"""Load the tokenizer and a HF causal LM from a local folder. Knows nothing about DeepSpeed: when the engine has an
`HfDeepSpeedConfig` alive for ZeRO-3, `from_pretrained` itself builds the model sharded (deepspeed.zero.Init)."""
from __future__ import annotations

import torch

from data_prep import tokenize
from data_prep.console import log
from trainer.config import ConfigError, ModelCfg
from trainer.loss import use_head_loss

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def load_tokenizer(cfg: ModelCfg):
    """The run's tokenizer: model.tokenizer, else the one in the model folder."""
    what = "model.tokenizer" if cfg.tokenizer else "model.path"
    return tokenize.load_tokenizer(cfg.tokenizer or cfg.path, what, cfg.trust_remote_code)


def resolve_dtype(dtype: str) -> str:
    """`auto`: bf16 on a GPU that supports it, else fp32."""
    if dtype != "auto":
        return dtype
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"


def resolve_attn_impl(attn_impl: str, dtype: str) -> str | None:
    """`auto`: flash_attention_2 where flash-attn is installed and the run is bf16/fp16 on a GPU; otherwise None, the
    model class's own default (sdpa where the architecture supports it, else eager)."""
    if attn_impl != "auto":
        return attn_impl
    import importlib.util

    if torch.cuda.is_available() and dtype in ("bf16", "fp16") and importlib.util.find_spec("flash_attn"):
        return "flash_attention_2"
    return None


def load_model(cfg: ModelCfg):
    """The HF model in the configured dtype (`auto` resolved here, as the engine's JSON resolves it), its loss per
    model.loss_impl (trainer/loss.py)."""
    from transformers import AutoModelForCausalLM

    tokenize.check_model_path(cfg.path, "model.path")
    dtype = resolve_dtype(cfg.dtype)
    kwargs = {"dtype": DTYPES[dtype], "trust_remote_code": cfg.trust_remote_code}
    attn = resolve_attn_impl(cfg.attn_impl, dtype)
    if attn:
        kwargs["attn_implementation"] = attn
    try:
        model = AutoModelForCausalLM.from_pretrained(cfg.path, **kwargs)
    except OSError as err:  # offline hub name, missing files, gated repo
        raise ConfigError(f"model.path {cfg.path}: cannot load ({str(err).splitlines()[0][:200]})") from None
    if cfg.activation_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    try:
        log(use_head_loss(model, cfg.loss_impl))
    except ValueError as err:
        raise ConfigError(str(err)) from None
    return model
