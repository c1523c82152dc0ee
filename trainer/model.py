"""Load the tokenizer and a HF causal LM from a local folder. Knows nothing about DeepSpeed: when the engine has an
`HfDeepSpeedConfig` alive for ZeRO-3, `from_pretrained` itself builds the model sharded (deepspeed.zero.Init)."""
from __future__ import annotations

import re
from pathlib import Path

import torch

from trainer.config import ConfigError, ModelCfg

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


HUB_NAME = re.compile(r"[\w.-]+/[\w.-]+")


def _check_path(path: str, what: str) -> None:
    """A local folder, or a hub name (`org/model`, only where the machine is online)."""
    if not Path(path).exists() and not HUB_NAME.fullmatch(path):
        raise ConfigError(f"{what} not found: {path} (a local model folder, or a hub name like org/model)")


def _from_pretrained(cls, path: str, what: str, **kwargs):
    try:
        return cls.from_pretrained(path, **kwargs)
    except OSError as err:  # offline hub name, missing files, gated repo
        raise ConfigError(f"{what} {path}: cannot load ({str(err).splitlines()[0][:200]})") from None


def load_tokenizer(cfg: ModelCfg):
    from transformers import AutoTokenizer

    path = cfg.tokenizer or cfg.path
    _check_path(path, "model.tokenizer" if cfg.tokenizer else "model.path")
    return _from_pretrained(AutoTokenizer, path, "model.tokenizer" if cfg.tokenizer else "model.path",
                            trust_remote_code=cfg.trust_remote_code)


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
    """The HF model in the configured dtype (`auto` resolved here, as the engine's JSON resolves it)."""
    from transformers import AutoModelForCausalLM

    _check_path(cfg.path, "model.path")
    dtype = resolve_dtype(cfg.dtype)
    kwargs = {"dtype": DTYPES[dtype], "trust_remote_code": cfg.trust_remote_code}
    attn = resolve_attn_impl(cfg.attn_impl, dtype)
    if attn:
        kwargs["attn_implementation"] = attn
    model = _from_pretrained(AutoModelForCausalLM, cfg.path, "model.path", **kwargs)
    if cfg.activation_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    return model
