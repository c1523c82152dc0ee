"""`odyssey export CKPT OUT [--dtype bf16]`: a ZeRO checkpoint → a normal HF folder (safetensors + tokenizer).

The shards are consolidated by DeepSpeed's own `zero_to_fp32` (CPU only, no process group), loaded into a model built
from the run's HF config, cast, and written with `save_pretrained` into a temp folder that is renamed into place.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import yaml

from data_prep.disk import writing
from trainer import checkpoint
from trainer.checkpoint import CheckpointError


def locate(ckpt: Path, fast: bool = False) -> tuple[Path, str, Path]:
    """(checkpoints root, tag, run folder) from a step folder, a checkpoints folder or a run folder; the checkpoint
    verified (checksums, or sizes only when `fast`)."""
    ckpt = ckpt.resolve()
    if (ckpt / checkpoint.COMPLETE).is_file():
        root, tag = ckpt.parent, ckpt.name
    else:
        root = ckpt / "checkpoints" if (ckpt / "checkpoints").is_dir() else ckpt
        tag = checkpoint.resume_tag(root, "auto")
        if not tag:
            raise CheckpointError(f"{ckpt}: no complete checkpoint found")
    checkpoint.resume_tag(root, tag)  # complete?
    checkpoint.verify(root, tag, fast=fast)
    run_dir = root.parent
    if not (run_dir / "config.yaml").is_file():
        raise CheckpointError(f"{run_dir}: no config.yaml next to the checkpoints (not an Odyssey run folder)")
    return root, tag, run_dir


def consolidated_model(root: Path, tag: str, model_path: str, trust_remote_code: bool = False):
    """The fp32 HF model of a ZeRO checkpoint: DeepSpeed's zero_to_fp32 (CPU, no process group) loaded into a model
    built from the run's HF config. Weights that do not fit the config are an error, not a silent partial load."""
    import torch
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    from transformers import AutoConfig, AutoModelForCausalLM

    state = get_fp32_state_dict_from_zero_checkpoint(str(root), tag=tag)
    config = AutoConfig.from_pretrained(model_path, trust_remote_code=trust_remote_code)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, trust_remote_code=trust_remote_code)
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or [])
    if unexpected or set(missing) - tied:
        raise CheckpointError(f"{root / tag}: weights do not fit the model config (missing {sorted(missing)[:3]}, "
                              f"unexpected {sorted(unexpected)[:3]})")
    model.tie_weights()
    return model


def export(ckpt: str | Path, out: str | Path, dtype: str = "fp32", overwrite: bool = False, fast: bool = False) -> Path:
    from transformers import AutoTokenizer

    from trainer.model import DTYPES as TORCH_DTYPES

    out = Path(out)
    if out.exists() and not overwrite:
        raise CheckpointError(f"{out} already exists; pass --overwrite to replace it")
    root, tag, run_dir = locate(Path(ckpt), fast)
    model_cfg = yaml.safe_load((run_dir / "config.yaml").read_text())["model"]
    t0 = time.time()
    model = consolidated_model(root, tag, model_cfg["path"], model_cfg.get("trust_remote_code", False))
    model.to(TORCH_DTYPES[dtype])
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with writing(out):  # a full disk: one line naming the export, and no folder left half-written
            model.save_pretrained(tmp, safe_serialization=True)
            AutoTokenizer.from_pretrained(model_cfg.get("tokenizer") or model_cfg["path"]).save_pretrained(tmp)
            (tmp / "odyssey_export.yaml").write_text(yaml.safe_dump(
                {"checkpoint": str(root / tag), "run": str(run_dir), "dtype": dtype,
                 "seconds": round(time.time() - t0, 2)}))
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
