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


def load_model(cfg: ModelCfg):
    from transformers import AutoModelForCausalLM

    _check_path(cfg.path, "model.path")
    kwargs = {"dtype": DTYPES[cfg.dtype], "trust_remote_code": cfg.trust_remote_code}
    if cfg.attn_impl:
        kwargs["attn_implementation"] = cfg.attn_impl
    model = _from_pretrained(AutoModelForCausalLM, cfg.path, "model.path", **kwargs)
    if cfg.activation_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    return model
