"""Typed run configuration: YAML in, validated pydantic model out.

Every section forbids unknown keys, so a typo fails with the dotted key in the message instead of being ignored.
`load_config(path, overrides)` is the one entry point; overrides are `dotted.key=value` strings parsed as YAML scalars.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, model_validator

from data_prep.config import ConfigError, Section, read_yaml, set_dotted, validate

__all__ = ["Config", "ConfigError", "Section", "config_from_dict", "load_config"]


class ModelCfg(Section):
    path: str  # local folder with a HF causal LM (config.json + weights) and its tokenizer
    tokenizer: str | None = None  # defaults to `path`
    # auto: bf16 on a GPU that supports it, else fp32 (the run's config.yaml records what was chosen)
    dtype: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    # auto: flash_attention_2 when flash-attn is installed and the run is bf16/fp16 on a GPU, else the model's default
    # (sdpa for the architectures that support it)
    attn_impl: Literal["auto", "eager", "sdpa", "flash_attention_2"] = "auto"
    activation_checkpointing: bool = False
    trust_remote_code: bool = False
    # How the next-token loss is computed (trainer/loss.py). auto: without full-vocabulary logits, by liger-kernel's
    # fused linear cross-entropy on CUDA when installed, else chunked in torch; the model's own loss (plain) where its
    # head is not a plain linear layer. chunked/liger: that kernel (an error where it cannot apply). plain: the model's
    # own forward with full logits.
    loss_impl: Literal["auto", "chunked", "liger", "plain"] = "auto"
    # torch.compile the model (DeepSpeed's engine.compile), each decoder layer compiled once and reused; the first
    # steps pay the compile time. Off by default: it gains on GPUs, and its compile costs minutes on a CPU.
    compile: bool = False


class StreamCfg(Section):
    name: str
    path: str  # prepared domain: a folder (manifest.json + train/ val/ test/) or a remote URL such as s3://bucket/dom
    proportion: float = Field(default=1.0, gt=0)


class DataOptions(Section):
    """How the streams are read (a study sets the streams per domain and takes these from its `train.data`)."""
    seq_len: int | None = Field(default=None, gt=1)  # must equal the shards' seq_len; None takes it from the manifests
    micro_batch: int = Field(default=1, gt=0)
    # loader worker processes per rank; None: on a GPU the job's cores per local rank less one, at least 1 and at most
    # 4 (trainer/data.py: loader_workers), on CPU 0 (every core trains)
    num_workers: int | None = Field(default=None, ge=0)
    shuffle: bool = True
    # how several streams mix (mosaicml-streaming's batching_method): random (each sample drawn by the proportions,
    # exact over an epoch) or stratified (every global batch split between the streams by their proportions: a 25%
    # replay stream is 25% of every step; each stream needs at least one sample of the global batch)
    mixing: Literal["random", "stratified"] = "random"
    verify_hashes: bool = True  # at start-up, hash every local shard file against its index (xxh64, IO-bound)
    cache_dir: str | None = None  # local copies of remote shards; default <run.out_dir>/.shard_cache


class DataCfg(DataOptions):
    streams: list[StreamCfg] = Field(min_length=1)


class OptimCfg(Section):
    lr: float = Field(default=1e-5, gt=0)
    min_lr_ratio: float = Field(default=0.1, ge=0, le=1)
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = Field(default=0.0, ge=0)
    warmup_steps: int = Field(default=0, ge=0)
    # after the warmup: cosine or linear decay to min_lr_ratio over the rest of the run, constant, or wsd
    # (warmup-stable-decay: the peak LR until the last decay_fraction of the steps, then linear to min_lr_ratio)
    schedule: Literal["cosine", "linear", "constant", "wsd"] = "cosine"
    decay_fraction: float = Field(default=0.1, gt=0, le=1)  # wsd only
    grad_clip: float = Field(default=1.0, ge=0)  # 0 disables clipping
    accumulation: int = Field(default=1, gt=0)
    # A micro-batch whose loss is not finite, or above spike_factor x the running mean loss, makes its optimizer step
    # be skipped (no update, counted in train/skipped_steps), or stops the run with a checkpoint. All ranks at once.
    bad_loss: Literal["skip", "stop"] = "skip"
    spike_factor: float | None = Field(default=None, gt=1)
    max_skipped: int = Field(default=100, ge=0)  # stop (with a checkpoint) after this many skipped steps


class LossCfg(Section):
    """Which target positions the training loss takes (evals always score every position): token-selective
    continued pretraining, to change what the run learns and forgets."""
    # token categories whose target positions get no loss (labels -100), as analysis/tokenstats.py categorizes the
    # vocabulary: newline_whitespace, punctuation, digits, function_words (eval.function_words), word_continuation,
    # other
    exclude_categories: list[str] = Field(default_factory=list)
    # Rho-1-style selection (trainer/selection.py): each micro-batch trains on this fraction of its targets, those
    # whose loss is furthest above the base model's. The base model's losses are read from the shards, where
    # `odyssey score CONFIG` stores them once before training (trainer/scoring.py). null: every target
    select_top: float | None = Field(default=None, gt=0, le=1)

    @model_validator(mode="after")
    def _known_categories(self) -> "LossCfg":
        if self.exclude_categories:
            from analysis.tokenstats import CATEGORIES

            unknown = [c for c in self.exclude_categories if c not in CATEGORIES]
            if unknown:
                raise ValueError(f"unknown token category '{unknown[0]}' (the categories: {', '.join(CATEGORIES)})")
        return self


class RunCfg(Section):
    out_dir: str = "runs"
    name: str = "run"
    seed: int = 0
    # How long to train: exactly one of these (max_steps defaults to 100 when none is set). The LR schedule spans it.
    max_steps: int | None = Field(default=None, gt=0)
    max_tokens: int | None = Field(default=None, gt=0)  # rounded up to whole steps
    epochs: float | None = Field(default=None, gt=0)  # passes over the training mixture
    # Save a checkpoint and exit cleanly at this step, the LR schedule still planned for the whole run: a long run
    # split across jobs of a fixed length, each resumed with --resume auto.
    halt_at_step: int | None = Field(default=None, gt=0)
    log_interval: int = Field(default=1, gt=0)

    @model_validator(mode="after")
    def _one_stop(self) -> "RunCfg":
        set_ = [k for k in ("max_steps", "max_tokens", "epochs") if getattr(self, k) is not None]
        if len(set_) > 1:
            raise ValueError(f"set only one of run.max_steps, run.max_tokens, run.epochs (got {', '.join(set_)})")
        if not set_:
            self.max_steps = 100
        return self


class EvalDomainCfg(Section):
    name: str
    path: str


class TransitionCfg(Section):
    """Where a token's loss counts as high for the transition shares (analysis/transitions.py): a quantile of the base
    model's token losses on each domain (default: its median), or an absolute loss in nats."""
    threshold: Literal["quantile", "absolute"] = "quantile"
    value: float = Field(default=0.5, gt=0)

    @model_validator(mode="after")
    def _quantile_below_one(self) -> "TransitionCfg":
        if self.threshold == "quantile" and self.value >= 1:
            raise ValueError(f"a quantile threshold lies in (0, 1), not {self.value}")
        return self


class EvalCfg(Section):
    interval: int = Field(default=50, ge=0)  # 0: only the baseline (step 0) and the final step
    domains: list[EvalDomainCfg] = Field(default_factory=list)  # the training streams are always added
    max_samples: int | None = Field(default=None, gt=0)  # per domain, taken from the start of its test split
    split: Literal["test", "val"] = "test"
    micro_batch: int | None = Field(default=None, gt=0)  # defaults to data.micro_batch
    log_spaced: int | None = Field(default=None, ge=2)  # N evals log-spaced over the run (dense early); overrides interval
    token_stats: bool = True  # per-token statistics against the step-0 baseline at every eval (docs/ANALYSIS.md)
    top_k: int = Field(default=20, gt=0)
    function_words: list[str] | None = None  # the "function_words" category; default: an English list
    transitions: TransitionCfg = Field(default_factory=TransitionCfg)  # low/high: the tokens/<d>/{ll,lh,hl,hh} shares


class TaskEvalCfg(Section):
    """Runs on task data (odyssey finetune): what the eval points measure besides the target loss."""
    examples: int = Field(default=64, ge=0)  # held-out examples per task scored by its metric (0: none)
    max_new_tokens: int = Field(default=60, gt=0)  # generation tasks: greedy decoding, cut at the first blank line
    micro_batch: int | None = Field(default=None, gt=0)  # defaults to eval.micro_batch
    weight_delta: bool = True  # mean |w - w0| to the base model (each rank keeps its ZeRO-3 partition of w0)


class CheckpointCfg(Section):
    interval: int = Field(default=0, ge=0)  # 0: save only at the end
    save_final: bool = True
    keep_last: int | None = Field(default=3, gt=0)  # delete older checkpoints beyond the newest K (None: keep all)
    keep_every: int | None = Field(default=None, gt=0)  # ...except those whose step is a multiple of M
    verify: Literal["full", "fast"] = "full"  # on resume: every file's xxh64 (full) or only its size (fast)
    grace_s: float | None = Field(default=None, gt=0)  # seconds between the stop signal and SIGKILL on this cluster


class DeepSpeedCfg(Section):
    config: str = "zero3"  # a name under ds_configs/ or a path to the user's JSON
    # The ZeRO stage, over the JSON's. auto: the lowest stage (1, 2, 3) whose model states (weights, gradients, AdamW
    # states) take at most half of one device's memory, the rest left to activations; ZeRO-3 when none does, and
    # whenever the JSON offloads. The start-up log and `odyssey train --dry-run` say what it picked and why.
    stage: Literal["auto", 1, 2, 3] | None = None  # None: the JSON's stage
    overrides: dict[str, Any] = Field(default_factory=dict)  # dotted keys applied to the JSON after "auto" filling


class MeterCfg(Section):
    # Dense peak TFLOP/s of one device for MFU. None: looked up by device name and the run's dtype (trainer/meter.py:
    # H100/H200/A100/L40S/RTX; bf16/fp16, or TF32/FP32 for fp32 runs); on a device not listed, and on CPU, no MFU.
    peak_tflops: float | None = Field(default=None, gt=0)


class TrackingCfg(Section):
    uri: str | None = None  # MLflow tracking URI; default MLFLOW_TRACKING_URI, else <run_dir>/mlflow.db
    experiment: str = "odyssey"
    run_name: str | None = None  # defaults to run.name
    tags: dict[str, str] = Field(default_factory=dict)
    wait_s: float = Field(default=60.0, ge=0)  # at the end, how long to wait for an unreachable server (journal keeps the rest)


class Config(Section):
    model: ModelCfg
    data: DataCfg
    optim: OptimCfg = Field(default_factory=OptimCfg)
    loss: LossCfg = Field(default_factory=LossCfg)
    run: RunCfg = Field(default_factory=RunCfg)
    eval: EvalCfg = Field(default_factory=EvalCfg)
    task: TaskEvalCfg = Field(default_factory=TaskEvalCfg)
    checkpoint: CheckpointCfg = Field(default_factory=CheckpointCfg)
    deepspeed: DeepSpeedCfg = Field(default_factory=DeepSpeedCfg)
    tracking: TrackingCfg = Field(default_factory=TrackingCfg)
    meter: MeterCfg = Field(default_factory=MeterCfg)

    @model_validator(mode="after")
    def _unique_names(self) -> "Config":
        for what, names in (("data.streams", [s.name for s in self.data.streams]),
                            ("eval.domains", [d.name for d in self.eval.domains])):
            dup = {n for n in names if names.count(n) > 1}
            if dup:
                raise ValueError(f"{what}: duplicate name(s) {sorted(dup)}")
        return self

    @model_validator(mode="after")
    def _selection_needs_head_loss(self) -> "Config":
        if self.loss.select_top is not None and self.model.loss_impl == "plain":
            raise ValueError("loss.select_top selects inside the chunked or fused head loss; model.loss_impl plain "
                             "(the model's own loss) has none: use auto")
        return self

    @property
    def run_dir(self) -> Path:
        return Path(self.run.out_dir) / self.run.name

    def eval_domains(self) -> list[EvalDomainCfg]:
        """Training streams first, then the extra eval domains, each once by name."""
        seen: dict[str, EvalDomainCfg] = {s.name: EvalDomainCfg(name=s.name, path=s.path) for s in self.data.streams}
        for d in self.eval.domains:
            seen.setdefault(d.name, d)
        return list(seen.values())


def apply_overrides(tree: dict, overrides: list[str]) -> dict:
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override '{item}' is not of the form dotted.key=value")
        set_dotted(tree, key.strip(), yaml.safe_load(raw) if raw != "" else "")
    return tree


def config_from_dict(tree: dict) -> Config:
    return validate(Config, tree)


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    return config_from_dict(apply_overrides(read_yaml(path), overrides or []))


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted-key view of a nested dict (for MLflow params)."""
    out: dict[str, Any] = {}
    if isinstance(tree, dict):
        for k, v in tree.items():
            out.update(flatten(v, f"{prefix}{k}."))
    elif isinstance(tree, list) and tree and all(isinstance(x, dict) for x in tree):
        for i, v in enumerate(tree):
            out.update(flatten(v, f"{prefix}{i}."))
    else:
        out[prefix[:-1]] = tree
    return out
