"""`odyssey train CONFIG --dry-run`: what a run would do, without loading weights or starting a process group.

Prints the resolved config, world size, tokens per step, total steps and DeepSpeed's own estimate of the per-device
memory for model states (params + grads + optimizer states) under the configured ZeRO stage and offload settings.
The model is built on the meta device from its config.json alone, so 70B shapes cost nothing.
"""
from __future__ import annotations

import math

import yaml

from data_prep import console
from trainer.config import Config, ConfigError

GIB = 2**30


def tokens_per_step(cfg: Config, seq_len: int, world_size: int) -> int:
    return cfg.data.micro_batch * cfg.optim.accumulation * world_size * seq_len


def total_steps(cfg: Config, step_tokens: int, samples_per_rank: int | None) -> int | None:
    """Optimizer steps the run (and its LR schedule) spans: run.max_steps, or run.max_tokens rounded up to whole
    steps, or run.epochs over each rank's share of the training mixture (None while that share is unknown)."""
    if cfg.run.max_steps:
        return cfg.run.max_steps
    if cfg.run.max_tokens:
        return max(1, -(-cfg.run.max_tokens // step_tokens))
    if samples_per_rank is None:
        return None
    return max(1, int(cfg.run.epochs * samples_per_rank) // (cfg.data.micro_batch * cfg.optim.accumulation))


def model_shape(model_path: str, trust_remote_code: bool = False) -> tuple[int, int]:
    """(total parameters, parameters of the largest single module) of the model in config.json, built on meta."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(model_path, trust_remote_code=trust_remote_code)
    except OSError as err:  # a hub name while offline, a folder without config.json: one line, not a traceback
        raise ConfigError(f"--dry-run reads the model's config.json: {model_path}: "
                          f"{(str(err) or type(err).__name__).splitlines()[0][:200]}") from None
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    total = sum(p.numel() for p in model.parameters())  # shared (tied) parameters count once
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    return total, largest


def memory_estimate(ds_config: dict, total_params: int, largest_layer: int, gpus_per_node: int, nodes: int) -> dict:
    """DeepSpeed's estimator for the configured stage/offload: bytes per GPU and per node (CPU)."""
    zero = ds_config.get("zero_optimization", {})
    stage = zero.get("stage", 0)
    offload_opt = zero.get("offload_optimizer", {}).get("device", "none") not in (None, "none")
    offload_param = zero.get("offload_param", {}).get("device", "none") not in (None, "none")
    if stage == 3:
        from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

        cpu, gpu, _ = estimate_zero3_model_states_mem_needs(total_params, largest_layer, gpus_per_node, nodes,
                                                            cpu_offload=offload_opt, cpu_offload_params=offload_param,
                                                            zero_init=True)
    elif stage in (1, 2):
        from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

        cpu, gpu = estimate_zero2_model_states_mem_needs(total_params, gpus_per_node, nodes, cpu_offload=offload_opt)
    else:
        raise ConfigError(f"--dry-run estimates ZeRO stages 1-3; the DeepSpeed config has stage {stage}")
    return {"stage": stage, "offload_optimizer": offload_opt, "offload_param": offload_param,
            "gpu_bytes": gpu, "cpu_bytes_per_node": cpu}


def plan(cfg: Config, world_size: int, gpus_per_node: int, seq_len: int, train_samples: int | None) -> dict:
    from trainer.engine import fill_ds_config

    if world_size % gpus_per_node:
        raise ConfigError(f"--world-size {world_size} is not a multiple of --gpus-per-node {gpus_per_node}")
    total, largest = model_shape(cfg.model.path, cfg.model.trust_remote_code)
    from transformers import AutoConfig

    hidden = getattr(AutoConfig.from_pretrained(cfg.model.path, trust_remote_code=cfg.model.trust_remote_code),
                     "hidden_size", None)
    ds = fill_ds_config(cfg, world_size, hidden)
    step_tokens = tokens_per_step(cfg, seq_len, world_size)
    steps = total_steps(cfg, step_tokens, None if train_samples is None else math.ceil(train_samples / world_size))
    return {"world_size": world_size, "gpus_per_node": gpus_per_node, "nodes": world_size // gpus_per_node,
            "seq_len": seq_len, "tokens_per_step": step_tokens, "total_steps": steps,
            "total_tokens": steps * step_tokens if steps else None, "params": total, "largest_layer_params": largest,
            "memory": memory_estimate(ds, total, largest, gpus_per_node, world_size // gpus_per_node),
            "ds_config": ds}


def print_plan(cfg: Config, p: dict) -> None:
    console.out("# resolved config")
    console.out(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False).rstrip())
    m = p["memory"]
    offload = ", ".join(k for k in ("offload_optimizer", "offload_param") if m[k]) or "no offload"
    steps = f"{p['total_steps']:,}" if p["total_steps"] else "unknown (epochs need the prepared domains)"
    console.out(f"""# plan
world size        {p['world_size']} ({p['nodes']} node(s) x {p['gpus_per_node']} device(s))
model             {p['params']:,} parameters (largest layer {p['largest_layer_params']:,})
seq_len           {p['seq_len']}
tokens per step   {p['tokens_per_step']:,}
total steps       {steps}""" + (f"\ntotal tokens      {p['total_tokens']:,}" if p["total_tokens"] else "") + f"""
model states      ZeRO-{m['stage']}, {offload} (DeepSpeed's estimator)
  per device      {m['gpu_bytes'] / GIB:,.2f} GiB  (params + grads + optimizer states)
  CPU per node    {m['cpu_bytes_per_node'] / GIB:,.2f} GiB
activations, buffers and fragmentation come on top.""")
