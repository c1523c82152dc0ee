"""DeepSpeed: fill the JSON's "auto" fields from the typed config, then build the ZeRO engine around the plain HF model.

The model is loaded while an `HfDeepSpeedConfig` is alive, so under ZeRO-3 `from_pretrained` materialises each parameter
already partitioned and no rank ever holds a full copy.
"""
from __future__ import annotations

import copy
import difflib
import importlib.resources
import json
import math
from collections.abc import KeysView
from pathlib import Path
from typing import Any

import torch

from data_prep.config import set_dotted
from trainer.config import Config, ConfigError, ModelCfg, flatten
from trainer.model import resolve_dtype


def resolve_ds_path(name_or_path: str) -> Path:
    """A user's JSON by path, or a name of the JSONs shipped in the installed `ds_configs` package (zero3, ...)."""
    path = Path(name_or_path)
    if path.suffix != ".json":
        shipped = importlib.resources.files("ds_configs") / f"{name_or_path}.json"
        path = Path(str(shipped))
        if not shipped.is_file():
            names = sorted(f.name[:-5] for f in importlib.resources.files("ds_configs").iterdir()
                           if f.name.endswith(".json"))
            raise ConfigError(f"deepspeed.config: no shipped DeepSpeed config '{name_or_path}' "
                              f"(shipped: {', '.join(names)}; or give a path to a .json)")
    if not path.is_file():
        raise ConfigError(f"deepspeed.config: no DeepSpeed JSON at {path}")
    return path


class LrSchedule:
    """Linear warmup from 0 (the re-warming of continued pretraining), then cosine or linear decay to min_lr_ratio,
    constant, or WSD: warmup, stable at the peak, then a linear decay to min_lr_ratio over the last `decay_fraction`
    of the steps (Hu et al. 2024, arXiv 2404.06395). A callable object (not a lambda) so LambdaLR's state_dict stays
    picklable in checkpoints."""

    def __init__(self, kind: str, warmup: int, total: int, min_ratio: float, decay_fraction: float = 0.1):
        self.kind, self.warmup, self.total, self.min_ratio = kind, warmup, total, min_ratio
        self.decay_fraction = decay_fraction

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / (self.warmup + 1)
        if self.kind == "constant":
            return 1.0
        if self.kind == "wsd":
            decay_steps = max(1, round(self.decay_fraction * self.total))
            start = max(self.warmup, self.total - decay_steps)
            progress = min(1.0, max(0, step - start) / max(1, self.total - start))
            return 1 - (1 - self.min_ratio) * progress
        progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        shape = 0.5 * (1 + math.cos(math.pi * progress)) if self.kind == "cosine" else 1 - progress
        return self.min_ratio + (1 - self.min_ratio) * shape


def _fill(node: dict, key: str, value: Any, where: str, conflicts: list[str]) -> None:
    """Set node[key] if it is "auto" or absent; record a conflict if the JSON already holds a different value."""
    current = node.get(key, "auto")
    if current == "auto":
        node[key] = value
    elif current != value and not (isinstance(value, (list, tuple)) and list(current) == list(value)):
        conflicts.append(f"{where}.{key}={current!r} (config says {value!r})")


def fill_ds_config(cfg: Config, world_size: int) -> dict:
    """Resolved DeepSpeed config for this run. Values set in both the JSON and the typed config must agree. ZeRO
    fields left "auto" (bucket sizes, persistence threshold) take DeepSpeed's own defaults, on every accelerator: on
    CPU (gloo) the hidden²-based sizes HF Trainer fills made no difference against them (docs/BENCHMARKS.md), and
    on a GPU DeepSpeed's are what a bare loop gets (the device check's `hf-buckets` variant measures HF's there)."""
    path = resolve_ds_path(cfg.deepspeed.config)
    try:
        ds = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"deepspeed.config: {path} is not valid JSON ({err.msg})") from None
    ds = copy.deepcopy(ds)
    conflicts: list[str] = []
    o = cfg.optim
    _fill(ds, "train_micro_batch_size_per_gpu", cfg.data.micro_batch, "ds", conflicts)
    _fill(ds, "gradient_accumulation_steps", o.accumulation, "ds", conflicts)
    _fill(ds, "train_batch_size", cfg.data.micro_batch * o.accumulation * world_size, "ds", conflicts)
    _fill(ds, "gradient_clipping", o.grad_clip, "ds", conflicts)
    dtype = resolve_dtype(cfg.model.dtype)
    for key, enabled in (("bf16", dtype == "bf16"), ("fp16", dtype == "fp16")):
        section = ds.setdefault(key, {"enabled": "auto"})
        _fill(section, "enabled", enabled, key, conflicts)
    opt = ds.setdefault("optimizer", {"type": "AdamW", "params": {}})
    params = opt.setdefault("params", {})
    for key, value in (("lr", o.lr), ("betas", list(o.betas)), ("eps", o.eps), ("weight_decay", o.weight_decay)):
        _fill(params, key, value, "optimizer.params", conflicts)
    # The LR schedule is Odyssey's (LrSchedule), passed to deepspeed.initialize; a scheduler in the JSON would fight it.
    sched = ds.pop("scheduler", None)
    if sched not in (None, {"type": "auto", "params": "auto"}):
        conflicts.append(f"scheduler={sched!r} (the schedule comes from optim.schedule/warmup_steps)")
    zero = ds.get("zero_optimization", {})
    for key in [k for k, v in zero.items() if v == "auto"]:
        zero.pop(key)  # DeepSpeed's own default
    if conflicts:
        raise ConfigError(f"deepspeed.config {path.name} conflicts with the Odyssey config: {'; '.join(conflicts)}")
    for dotted, value in cfg.deepspeed.overrides.items():
        set_dotted(ds, dotted, value)
    if dtype == "bf16" and zero.get("stage", 0) in (1, 2):
        # a non-finite gradient must skip the step (the bad-loss policy relies on it); ZeRO-1/2 check it in bf16
        # only when asked (ZeRO-3 and fp32 always do)
        ds["bf16"].setdefault("check_grad_overflow", True)
    check_ds_config(ds, cfg)
    return ds


# Top-level keys deepspeed.initialize reads from the dict itself (deepspeed/__init__.py), beside DeepSpeedConfig's.
INITIALIZE_KEYS = {"sequence_parallel_size", "data_parallel_size"}


class KeysRead(dict):
    """A dict that records every key looked up in it (get, [], `in`, `in .keys()`): handed to DeepSpeedConfig, the
    keys it knows. Its copy.copy shares the record (a shallow copy of __dict__), as DeepSpeedConfig parses a copy."""

    def __init__(self, tree: dict):
        super().__init__(tree)
        self.read: set = set()

    def get(self, key, default=None):
        self.read.add(key)
        return super().get(key, default)

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)

    def __contains__(self, key):
        self.read.add(key)
        return super().__contains__(key)

    def keys(self):
        return KeysView(self)  # membership through __contains__


def check_ds_config(ds: dict, cfg: Config) -> None:
    """The resolved JSON through DeepSpeed's own config parser, DeepSpeedConfig, with no process group (it then
    counts one rank, so the world-size-dependent train_batch_size is left to fill_ds_config's checks): its pydantic
    sections (zero_optimization, bf16, ...) refuse an unknown key or a bad value, here as one line naming it before
    any rank or weight loads, not as a traceback from deepspeed.initialize. DeepSpeed ignores unknown top-level keys;
    those are refused against the keys DeepSpeedConfig looks up while it parses, recorded (so the installed
    DeepSpeed's own, not a list kept here)."""
    from deepspeed.runtime.config import DeepSpeedConfig, DeepSpeedConfigError
    from pydantic import ValidationError

    def origin(key: str | None) -> str:
        if key and any(key == k or key.startswith(f"{k}.") for k in cfg.deepspeed.overrides):
            return "deepspeed.overrides"
        with_overrides = " with deepspeed.overrides" if cfg.deepspeed.overrides and not key else ""
        return f"deepspeed.config {cfg.deepspeed.config}{with_overrides}"

    seen = KeysRead({k: v for k, v in ds.items() if k != "train_batch_size"})
    try:
        DeepSpeedConfig(seen)
    except ValidationError as err:
        e = err.errors()[0]
        key = dotted_key(ds, e["loc"])
        if e["type"] == "extra_forbidden":
            raise ConfigError(f"{origin(key)}: unknown DeepSpeed key '{key}'") from None
        raise ConfigError(f"{origin(key)}: DeepSpeed key '{key}': {e['msg']} (got {e['input']!r:.100})") from None
    except (DeepSpeedConfigError, AssertionError, ValueError, TypeError, KeyError) as err:
        why = (str(err) or repr(err)).splitlines()[0].strip()
        raise ConfigError(f"{origin(None)}: DeepSpeed refuses it: {why}") from None
    unknown = sorted(set(ds) - seen.read - INITIALIZE_KEYS)
    if unknown:
        near = difflib.get_close_matches(unknown[0], seen.read | INITIALIZE_KEYS, n=1)
        raise ConfigError(f"{origin(unknown[0])}: unknown DeepSpeed key '{unknown[0]}' (DeepSpeed would ignore it"
                          + (f"; did you mean '{near[0]}'?)" if near else ")"))


def dotted_key(ds: dict, loc: tuple) -> str:
    """Where pydantic's error location (relative to the section DeepSpeed validated) is in the resolved JSON."""
    tail = ".".join(str(part) for part in loc)
    for key in flatten(ds):
        at = f".{key}.".find(f".{tail}.")
        if at >= 0:
            return key[:at + len(tail)]
    return tail


def cuda_header_dirs() -> list[str]:
    """The CUDA library headers (cusparse.h, cublas_v2.h, ...) of the pip `nvidia-*` wheels torch runs on. torch's
    extension builder adds only CUDA_HOME/include, and a toolkit with only nvcc and cudart there cannot build any op
    that includes ATen/cuda (FusedAdam's did not build on the GPU node for this reason)."""
    import glob
    import site

    roots = [*site.getsitepackages(), site.getusersitepackages()]
    return sorted({d for r in roots for d in glob.glob(f"{r}/nvidia/*/include") + glob.glob(f"{r}/nvidia/cu*/include")})


def use_cuda_headers() -> None:
    """Put cuda_header_dirs() on CPATH (gcc and nvcc both read it) before a JIT build of a DeepSpeed CUDA op."""
    import os

    if torch.cuda.is_available():
        extra = [d for d in cuda_header_dirs() if d not in os.environ.get("CPATH", "").split(os.pathsep)]
        if extra:
            os.environ["CPATH"] = os.pathsep.join(filter(None, [os.environ.get("CPATH"), *extra]))


def fused_adam_builds() -> tuple[bool, str]:
    """Whether DeepSpeed's FusedAdam op loads on this accelerator: prebuilt, or JIT-built (CUDA: with nvcc, about a
    minute the first time; CPU: a C++ kernel in seconds), then cached in ~/.cache/torch_extensions. Returns (built,
    why not: the first error line)."""
    use_cuda_headers()
    try:
        from deepspeed.accelerator import get_accelerator

        get_accelerator().create_op_builder("FusedAdamBuilder").load(verbose=False)
        return True, ""
    except Exception as err:  # no nvcc or compiler, a build error, an incompatible CUDA: all mean "use torch's"
        lines = [ln for ln in str(err).splitlines() if "error" in ln.lower()] or str(err).splitlines() or [repr(err)]
        return False, lines[0][:200]


def choose_optimizer(ds: dict, device: torch.device) -> str:
    """Pick the fastest AdamW this rank can run, in the resolved JSON; returns the line to log. DeepSpeed's FusedAdam
    when its op builds for this accelerator (on the CPU box it also beats torch's AdamW: docs/BENCHMARKS.md), else
    torch's AdamW, fused on a GPU. Offloaded optimizers are DeepSpeed's CPU Adam, and a JSON that says `torch_adam`
    is left alone."""
    opt = ds.get("optimizer", {})
    params = opt.setdefault("params", {})
    offload = ds.get("zero_optimization", {}).get("offload_optimizer", {}).get("device", "none")
    if opt.get("type", "").lower() not in ("adam", "adamw"):
        return f"optimizer: {opt.get('type', 'from the DeepSpeed JSON')}"
    if offload not in (None, "none"):
        return f"optimizer: DeepSpeedCPUAdam (optimizer offloaded to {offload})"
    if "torch_adam" in params:
        return f"optimizer: as the DeepSpeed JSON says (torch_adam={params['torch_adam']})"
    built, why_not = fused_adam_builds()
    if built:
        return f"optimizer: DeepSpeed FusedAdam ({device.type})"
    params["torch_adam"] = True
    if device.type == "cuda":
        params["fused"] = True
    return (f"optimizer: torch.optim.AdamW{'(fused=True)' if device.type == 'cuda' else ''} (DeepSpeed's FusedAdam "
            f"op did not build here: {why_not})")


def build_engine(cfg: Config, ds_config: dict, load_model, total_steps: int):
    """Load the model under ZeRO-3 sharded init and wrap it. Returns (engine, LR scheduler, zero3_init): keep
    `zero3_init` (transformers' HfDeepSpeedConfig, None below ZeRO-3) for the life of the run, since transformers
    asks it whether ZeRO-3 is on whenever it touches the model's parameters."""
    import deepspeed
    from transformers.integrations import HfDeepSpeedConfig

    # Must stay referenced until the model is built, or from_pretrained does not shard at init.
    dschf = HfDeepSpeedConfig(ds_config) if ds_config.get("zero_optimization", {}).get("stage") == 3 else None
    model = load_model()
    if dschf is not None and not all(hasattr(p, "ds_id") for p in model.parameters()):
        # from_pretrained built full tensors: every rank would hold the whole model at once.
        raise RuntimeError("ZeRO-3 sharded init did not apply while loading the model (HfDeepSpeedConfig inactive)")
    schedule = LrSchedule(cfg.optim.schedule, cfg.optim.warmup_steps, total_steps, cfg.optim.min_lr_ratio,
                           cfg.optim.decay_fraction)
    # A callable scheduler is bound to DeepSpeed's wrapped optimizer, stepped by engine.step() and saved in checkpoints.
    engine, _, _, scheduler = deepspeed.initialize(
        model=model, model_parameters=[p for p in model.parameters() if p.requires_grad], config=ds_config,
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, schedule),
    )
    return engine, scheduler, dschf


def inference_model(cfg: ModelCfg, zero3: bool, device: torch.device):
    """(model, keep-alive) for scoring, no optimizer: a plain model on this rank's device, or a ZeRO-3 inference
    engine's module, each rank materialising only its partition (keep the second value alive while scoring)."""
    import deepspeed
    from transformers.integrations import HfDeepSpeedConfig

    from trainer.model import load_model

    if not zero3:
        return load_model(cfg).to(device).eval(), None
    dtype = resolve_dtype(cfg.dtype)
    ds = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1,
          "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
          "bf16": {"enabled": dtype == "bf16"}, "fp16": {"enabled": dtype == "fp16"}}
    keep = HfDeepSpeedConfig(ds)  # alive while from_pretrained runs, so each rank materialises only its partition
    engine = deepspeed.initialize(model=load_model(cfg), config=ds)[0]
    return engine.module.eval(), (keep, engine)


def retrace_zero3(engine) -> bool:
    """Have ZeRO-3 record its parameter-fetch trace anew on the next forward: call it after an eval. When ZeRO-3
    (DeepSpeed 0.19) takes a complete trace from no-grad forwards (the step-0 baseline eval, or evals whose module
    order left the training trace, as generation does), the run was seen to release every gathered parameter after
    each training forward and gather it again in the backward, for the rest of the run, where a trace recorded by a
    training step keeps them for the backward (stage3_max_reuse_distance). CPU bench: backward 1.13 s against
    0.88 s, 44 extra all-gathers a step (docs/BENCHMARKS.md). The cost: the next step records the trace, without
    prefetching. Returns whether there was a trace to drop."""
    offload = getattr(engine.optimizer, "parameter_offload", None)
    coordinator = offload.get_param_coordinator() if offload is not None else None
    if coordinator is None or coordinator.is_invalid_trace():
        return False
    coordinator._invalidate_trace()  # DeepSpeed's own reset when a step leaves the trace
    return True


def parameter_counts(model) -> tuple[int, int]:
    """(total parameters, parameters this rank holds). Under ZeRO-3 each rank holds only its partition."""
    total = local = 0
    for p in model.parameters():
        n = p.ds_numel if hasattr(p, "ds_numel") else p.numel()
        total += n
        local += p.ds_tensor.numel() if hasattr(p, "ds_tensor") else n
    return total, local
