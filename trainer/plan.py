"""`odyssey train CONFIG --dry-run`: what a run would do, without loading weights or starting a process group.

Prints the resolved config, world size, tokens per step, total steps, DeepSpeed's own estimate of the per-device
memory for model states (params + grads + optimizer states) under the ZeRO stage (`deepspeed.stage: auto` picked here
as at start-up) and offload settings, and the largest micro-batch whose activations fit beside them, with and without
activation checkpointing. The model is built on the meta device from its config.json alone, so 70B shapes cost nothing.
"""
from __future__ import annotations

import math

import yaml

from data_prep import console
from trainer.config import Config, ConfigError, ModelCfg

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


def model_shape(model_path: str, trust_remote_code: bool = False, config=None) -> tuple[int, int]:
    """(total parameters, parameters of the largest single module) of the model in config.json, built on meta;
    `config`: that config.json already read (model_config), so it is not read again."""
    import torch
    from transformers import AutoModelForCausalLM

    config = config if config is not None else model_config(model_path, trust_remote_code)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    total = sum(p.numel() for p in model.parameters())  # shared (tied) parameters count once
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    return total, largest


def model_config(model_path: str, trust_remote_code: bool = False):
    from transformers import AutoConfig

    from data_prep.tokenize import check_model_path

    check_model_path(model_path, "model.path", "config")  # a hub name this machine cannot get: one line, at once
    try:
        return AutoConfig.from_pretrained(model_path, trust_remote_code=trust_remote_code)
    except OSError as err:  # a hub name while offline, a folder without config.json: one line, not a traceback
        raise ConfigError(f"the model's config.json: {model_path}: "
                          f"{(str(err) or type(err).__name__).splitlines()[0][:200]}") from None


# The names config.json gives the longest sequence under: transformers maps each architecture's own onto
# max_position_embeddings (GPT-2's n_positions, DBRX's max_seq_len); the others are remote-code configs' (MPT's
# max_seq_len, ChatGLM's seq_length, ...), read where nothing maps them.
POSITION_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "max_seq_len", "n_ctx")


def position_limit(config) -> tuple[int, str] | None:
    """(the positions the model takes, where config.json says so), None where it states no limit (ALiBi models such
    as BLOOM). RoPE scaling stretches the limit as transformers applies it (modeling_rope_utils): linear, dynamic and
    YaRN scale the original length (rope_scaling's original_max_position_embeddings, else max_position_embeddings)
    by `factor`; llama3 and longrope configs already state the stretched length as max_position_embeddings, which
    the larger of the two keeps. A sliding window is no limit: it bounds how far back a layer attends (transformers
    masks it, for every attention implementation), not the positions, so a model whose window is shorter than
    seq_len (Mistral, Qwen2, Gemma 2/3) trains on it as it was pretrained, each token seeing its last `window`."""
    config = config.get_text_config()
    name = next((k for k in POSITION_KEYS if isinstance(getattr(config, k, None), int)), None)
    if name is None:
        return None
    limit, why = getattr(config, name), config.attribute_map.get(name, name)
    rope = getattr(config, "rope_scaling", None) or getattr(config, "rope_parameters", None) or {}
    factor, original = rope.get("factor"), rope.get("original_max_position_embeddings") or limit
    if isinstance(factor, (int, float)) and factor * original > limit:
        kind = rope.get("rope_type", rope.get("type"))
        limit, why = int(factor * original), f"rope_scaling {kind}: factor {factor} x {original} positions"
    return limit, why


def check_model_limits(model: ModelCfg, config, seq_len: int, vocab: int | None) -> None:
    """One line before any weight loads where the data cannot fit the model: rows longer than its positions (a
    RoPE model would train on positions it never learned, a learned-position model index past its table), or a
    tokenizer with ids past its embedding rows. `vocab`: the tokenizer's size (None: not known, not checked)."""
    limit = position_limit(config)
    if limit and seq_len > limit[0]:
        raise ConfigError(f"model.path {model.path}: seq_len {seq_len} is above the model's {limit[0]} positions "
                          f"({limit[1]} in config.json): prepare the domains with odyssey prep --seq-len {limit[0]} "
                          f"or less")
    rows = getattr(config.get_text_config(), "vocab_size", None)
    if vocab and isinstance(rows, int) and vocab > rows:
        tokenizer = f"model.tokenizer {model.tokenizer}" if model.tokenizer else "its tokenizer"
        raise ConfigError(f"model.path {model.path}: {tokenizer} has {vocab} tokens, more than the model's {rows} "
                          f"embedding rows (vocab_size in config.json): ids from {rows} up have no embedding; use "
                          f"the tokenizer the model was trained with")


def device_bytes(local_world: int) -> tuple[int, str]:
    """(memory of one device, what it is): this machine's GPU, else its RAM shared by the local ranks."""
    import psutil
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_properties(0).total_memory, torch.cuda.get_device_name(0)
    return psutil.virtual_memory().total // max(1, local_world), f"CPU RAM / {local_world} local rank(s)"


def pick_stage(ds_config: dict, total_params: int, largest_layer: int, gpus_per_node: int, nodes: int,
               memory: int) -> tuple[int, str]:
    """`deepspeed.stage: auto`: ZeRO-2 when its model states take at most half of `memory` (one device's), else
    ZeRO-3; ZeRO-3 whenever the JSON offloads (offload is a ZeRO-3 setting here). Returns (stage, why)."""
    zero = ds_config.get("zero_optimization", {})
    if any(zero.get(k, {}).get("device", "none") not in (None, "none") for k in ("offload_optimizer", "offload_param")):
        return 3, "the DeepSpeed JSON offloads"
    trial = {**ds_config, "zero_optimization": {**zero, "stage": 2}}
    need = memory_estimate(trial, total_params, largest_layer, gpus_per_node, nodes)["gpu_bytes"]
    if need <= memory / 2:
        return 2, f"ZeRO-2 model states {need / GIB:,.1f} GiB <= half of {memory / GIB:,.0f} GiB"
    return 3, f"ZeRO-2 model states {need / GIB:,.1f} GiB > half of {memory / GIB:,.0f} GiB"


def activation_bytes_per_token(config, dtype_bytes: int, checkpointing: bool, chunked_loss: bool) -> int:
    """Activations one token keeps for backward, for a Llama-style decoder with flash/sdpa attention (no score
    matrix kept). Per layer 11h + 3·kv + 4i values: the two RMSNorms (input, normalized, scaled), q/k/v after RoPE,
    the attention output, and the MLP's gate, up, activation and product, as counted by autograd's saved-tensor
    hooks on a CPU Llama (tests/unit/test_plan_and_retention.py); with checkpointing, each layer's input alone,
    plus one layer recomputed in the backward. The loss adds ~10 bytes per vocabulary entry (fp32 logits and their
    gradient) unless chunked. An estimate: the bench's micro-batch sweep measures on the device."""
    h = config.hidden_size
    i = getattr(config, "intermediate_size", 4 * h)
    heads = config.num_attention_heads
    kv = h // heads * (getattr(config, "num_key_value_heads", None) or heads)
    layers = config.num_hidden_layers
    layer = (11 * h + 3 * kv + 4 * i) * dtype_bytes
    kept = (h * dtype_bytes * layers + layer) if checkpointing else layer * layers
    return kept + (0 if chunked_loss else 10 * config.vocab_size)


def max_micro_batch(memory: int, states_bytes: int, per_token: int, seq_len: int) -> int:
    """The largest micro-batch whose activations fit in 90 % of `memory` beside the model states (0: none fits)."""
    return max(0, int((0.9 * memory - states_bytes) // (per_token * seq_len)))


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


def plan(cfg: Config, world_size: int, gpus_per_node: int, seq_len: int, train_samples: int | None,
         device_gib: float | None = None, vocab: int | None = None) -> dict:
    """What a run would do (`vocab`: its tokenizer's size where known, checked against the model as a run does)."""
    from trainer.engine import fill_ds_config

    if world_size % gpus_per_node:
        raise ConfigError(f"--world-size {world_size} is not a multiple of --gpus-per-node {gpus_per_node}")
    config = model_config(cfg.model.path, cfg.model.trust_remote_code)
    check_model_limits(cfg.model, config, seq_len, vocab)
    total, largest = model_shape(cfg.model.path, cfg.model.trust_remote_code, config)
    ds = fill_ds_config(cfg, world_size)
    nodes = world_size // gpus_per_node
    device_memory, device = device_bytes(gpus_per_node)
    if device_gib:
        device_memory, device = int(device_gib * GIB), "--device-gib"
    stage_why = apply_stage(cfg, ds, total, largest, gpus_per_node, nodes, device_memory)
    step_tokens = tokens_per_step(cfg, seq_len, world_size)
    steps = total_steps(cfg, step_tokens, None if train_samples is None else math.ceil(train_samples / world_size))
    memory = memory_estimate(ds, total, largest, gpus_per_node, nodes)
    return {"world_size": world_size, "gpus_per_node": gpus_per_node, "nodes": nodes,
            "seq_len": seq_len, "tokens_per_step": step_tokens, "total_steps": steps,
            "total_tokens": steps * step_tokens if steps else None, "params": total, "largest_layer_params": largest,
            "memory": memory, "stage_why": stage_why, "device": device, "device_bytes": device_memory,
            "max_micro_batch": micro_batch_fits(cfg, config, memory["gpu_bytes"], device_memory, seq_len),
            "ds_config": ds}


def apply_stage(cfg: Config, ds: dict, total: int, largest: int, gpus_per_node: int, nodes: int,
                memory: int) -> str:
    """Set the resolved JSON's ZeRO stage per `deepspeed.stage`; returns the line that says which and why."""
    zero = ds.setdefault("zero_optimization", {})
    if cfg.deepspeed.stage is None:
        return f"ZeRO-{zero.get('stage', 0)} (the DeepSpeed JSON's)"
    if cfg.deepspeed.stage != "auto":
        zero["stage"] = cfg.deepspeed.stage
        return f"ZeRO-{zero['stage']} (deepspeed.stage)"
    zero["stage"], why = pick_stage(ds, total, largest, gpus_per_node, nodes, memory)
    return f"ZeRO-{zero['stage']} (deepspeed.stage auto: {why})"


def micro_batch_fits(cfg: Config, config, states_bytes: int, memory: int, seq_len: int) -> dict[bool, int]:
    """{activation checkpointing: the largest micro-batch that fits} on one device of `memory` bytes."""
    from trainer.model import resolve_dtype

    dtype_bytes = 4 if resolve_dtype(cfg.model.dtype) == "fp32" else 2
    chunked = cfg.model.loss_impl != "plain"
    return {ckpt: max_micro_batch(memory, states_bytes,
                                  activation_bytes_per_token(config, dtype_bytes, ckpt, chunked), seq_len)
            for ckpt in (False, True)}


def print_plan(cfg: Config, p: dict) -> None:
    console.out("# resolved config")
    console.out(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False).rstrip())
    m, fits = p["memory"], p["max_micro_batch"]
    offload = ", ".join(k for k in ("offload_optimizer", "offload_param") if m[k]) or "no offload"
    steps = f"{p['total_steps']:,}" if p["total_steps"] else "unknown (epochs need the prepared domains)"
    console.out(f"""# plan
world size        {p['world_size']} ({p['nodes']} node(s) x {p['gpus_per_node']} device(s))
model             {p['params']:,} parameters (largest layer {p['largest_layer_params']:,})
seq_len           {p['seq_len']}
tokens per step   {p['tokens_per_step']:,}
total steps       {steps}""" + (f"\ntotal tokens      {p['total_tokens']:,}" if p["total_tokens"] else "") + f"""
zero stage        {p['stage_why']}
model states      ZeRO-{m['stage']}, {offload} (DeepSpeed's estimator)
  per device      {m['gpu_bytes'] / GIB:,.2f} GiB  (params + grads + optimizer states)
  CPU per node    {m['cpu_bytes_per_node'] / GIB:,.2f} GiB
micro-batch fit   on {p['device_bytes'] / GIB:,.0f} GiB ({p['device']}), seq {p['seq_len']}: at most \
{fits[False]} without activation checkpointing, {fits[True]} with it (data.micro_batch is {cfg.data.micro_batch})
activations are an estimate (trainer/plan.py); buffers and fragmentation come on top.""")
