"""`odyssey eval --checkpoints DIR [--watch]`: evaluate checkpoints as they appear, outside the training job.

DIR is a run's `checkpoints/` folder (DeepSpeed ZeRO checkpoints, consolidated in memory with DeepSpeed's
`zero_to_fp32`) or a folder of HF-format checkpoints (subfolders with config.json). Each checkpoint is scored on the
run's eval domains with the same code as in training, single-process or as plain data parallel across the ranks a
launcher starts (each rank holds the whole model on its device, so this is for models that fit one device; larger
ones evaluate inside the training job); only rank 0 builds it in host memory (`shared_model`). Metrics go into the
training run (its MLflow run id, at the checkpoint's step; its status stays the training job's) or a new run (ended
here), including token statistics against the run's cached step-0 baseline (computed and cached here if missing).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch
import yaml

from analysis.metrics import baseline_from_cache
from data_prep.console import log
from data_prep.disk import write_atomic
from data_prep.errors import OdysseyError
from data_prep.manifest import tokenizer_fingerprint
from trainer import checkpoint
from trainer.checkpoint import CheckpointError
from trainer.config import Config, config_from_dict
from trainer.data import check_domains, open_eval_sets
from trainer.dist import Dist, failure_of, first_problem, init_distributed, stop_together
from trainer.loss import use_head_loss
from trainer.model import DTYPES, load_model, load_tokenizer, resolve_dtype
from trainer.state import RunState
from trainer.eval_logger import EvalLogger
from trainer.tracking import Tracker

DONE = "evaluated.json"  # in the checkpoints folder: tags already scored by odyssey eval


def list_checkpoints(folder: Path) -> list[tuple[int, str, str]]:
    """(step, tag or subfolder, kind) of every complete checkpoint, oldest first."""
    found = []
    for p in sorted(folder.iterdir()) if folder.is_dir() else []:
        if (p / checkpoint.COMPLETE).is_file():
            found.append((json.loads((p / checkpoint.COMPLETE).read_text())["step"], p.name, "deepspeed"))
        elif (p / "config.json").is_file() and any(p.glob("*.safetensors")):
            digits = "".join(c for c in p.name if c.isdigit())
            found.append((int(digits) if digits else 0, p.name, "hf"))
    return sorted(found)


def listing(folder: Path, done: set[str], world: int) -> tuple[list, list]:
    """(checkpoints to score now, every complete one) as rank 0 sees them: every rank scores the same ones in the
    same order (the scoring is collective) and stops watching together, while the training job saves and prunes."""
    everything = list_checkpoints(folder)
    shared = [([c for c in everything if c[1] not in done], everything)]
    if world > 1:
        torch.distributed.broadcast_object_list(shared, src=0)
    return shared[0]


def unless_pruned(folder: Path, name: str, done: set[str], read):
    """`read()` of a checkpoint; None when the training job removed it (checkpoint.keep_last) before its turn came,
    which skips it rather than ending the watch."""
    try:
        return read()
    except (CheckpointError, OSError):
        if (folder / name).exists():
            raise
    done.add(name)
    log(f"{name} was removed (checkpoint.keep_last) before it was scored; skipped")
    return None


def load_checkpoint_model(folder: Path, name: str, kind: str, model_cfg):
    from transformers import AutoModelForCausalLM

    from trainer.export import consolidated_model

    if kind == "hf":
        return AutoModelForCausalLM.from_pretrained(folder / name, dtype=torch.float32)
    return consolidated_model(folder, name, model_cfg.path, model_cfg.trust_remote_code)


def checkpoint_model(folder: Path, name: str, kind: str, cfg: Config, dist: Dist):
    """A checkpoint's model on this rank's device, in the run's dtype."""
    config_path = folder / name if kind == "hf" else cfg.model.path  # what load_checkpoint_model builds from
    return shared_model(lambda: load_checkpoint_model(folder, name, kind, cfg.model), config_path, cfg.model, dist,
                        name)


def _tensors(model) -> list[tuple[str, torch.Tensor]]:
    """Every parameter (tied ones once) and buffer (non-persistent ones too, e.g. rotary frequencies), in an order
    that the same architecture gives on every rank."""
    return list(model.named_parameters()) + list(model.named_buffers())


def shared_model(build, config_path: str | Path, model_cfg, dist: Dist, what: str):
    """`build()`'s model on this rank's device in the run's dtype, with the run's loss (model.loss_impl, the same on
    every rank), built on the host by rank 0 alone. Consolidating a ZeRO
    checkpoint (or loading a model) takes the whole fp32 model in host memory, and more: done on every rank, 8 ranks
    of a node took 8 times that (and read the checkpoint 8 times). The other ranks build an empty skeleton on their
    device from the same config, and rank 0 sends every tensor over the device collectives. A failure on any rank
    stops every rank (rank 0's with its own exception, the others with one line), none waits in a broadcast."""
    dtype, trust_remote_code = DTYPES[model_cfg.dtype], model_cfg.trust_remote_code
    if dist.world == 1:
        model = build().to(dist.device, dtype)
        use_head_loss(model, model_cfg.loss_impl)
        return model
    t0, model, spec, failure = time.time(), None, None, None
    if dist.main:
        try:
            model = build().to(dist.device, dtype)
            spec = {"attn": model.config._attn_implementation,
                    "tensors": [(n, tuple(t.shape), str(t.dtype)) for n, t in _tensors(model)]}
        except Exception as err:  # every rank must hear of it, or the others wait in the broadcast below
            failure = err
    shared = [spec]
    torch.distributed.broadcast_object_list(shared, src=0)
    if failure is not None:
        raise failure  # rank 0's own: a pruned checkpoint's OSError or CheckpointError (skipped), or a bug
    if shared[0] is None:
        raise CheckpointError(f"{what}: rank 0 could not build the model (its error is in its output)")
    if not dist.main:
        try:
            model = _skeleton(config_path, trust_remote_code, shared[0], dtype, dist.device)
        except Exception as err:
            failure = err
    problem = None if failure is None else f"{what}: rank {dist.rank} could not build the model ({failure})"
    agreed = first_problem(problem, dist)
    if failure is not None and not isinstance(failure, (OdysseyError, OSError)):
        raise failure  # a bug: its traceback here; the other ranks stop with the line
    if agreed is not None:
        raise CheckpointError(agreed)
    with torch.no_grad():
        for _, t in _tensors(model):
            torch.distributed.broadcast(t.data, src=0)
    use_head_loss(model, model_cfg.loss_impl)
    log(f"{what}: built once on rank 0's host, sent to {dist.world} ranks in {time.time() - t0:.1f}s")
    return model


def _skeleton(config_path: str | Path, trust_remote_code: bool, spec: dict, dtype: torch.dtype, device):
    """The model rank 0 built, with its tensors allocated (not filled) on `device`, parameters never on the host:
    built on the meta device, cast as rank 0 cast its model, then each tensor given rank 0's dtype (a buffer that
    `build()` kept in fp32, say) and checked against rank 0's names and shapes."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(config_path, trust_remote_code=trust_remote_code)
    with init_empty_weights(include_buffers=False):  # real buffers: rotary frequencies kept as attributes too
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation=spec["attn"],
                                                 trust_remote_code=trust_remote_code)
    model.to(dtype)
    model.to_empty(device=device)
    model.tie_weights()  # built empty, a tied head is a parameter of its own (docs/PITFALLS.md)
    mine = _tensors(model)
    if [(n, tuple(t.shape)) for n, t in mine] != [(n, tuple(shape)) for n, shape, _ in spec["tensors"]]:
        raise ValueError(f"the model built from {config_path} differs from rank 0's")
    for (_, t), (_, _, want) in zip(mine, spec["tensors"]):
        if str(t.dtype) != want:
            t.data = torch.empty(t.shape, dtype=getattr(torch, want.removeprefix("torch.")), device=device)
    return model.eval()


def run_config(folder: Path, config: str | None) -> Config:
    path = Path(config) if config else folder.parent / "config.yaml"
    if not path.is_file():
        raise CheckpointError(f"no run config: {path} (pass --config for checkpoints outside an Odyssey run folder)")
    return config_from_dict(yaml.safe_load(path.read_text()))


def evaluate_checkpoints(folder: str | Path, config: str | None = None, watch: bool = False, poll: float = 30.0,
                         new_run: bool = False, until_step: int | None = None, fast: bool = False) -> list[int]:
    """Score every complete checkpoint not scored before (with --watch: as they appear, until `until_step`)."""
    folder = Path(folder).resolve()
    while watch and not (folder.is_dir() and (config or (folder.parent / "config.yaml").is_file())):
        time.sleep(poll)  # the training job has not started writing yet
    if not folder.is_dir():
        raise CheckpointError(f"checkpoints folder not found: {folder}")
    cfg = run_config(folder, config)
    cfg.model.dtype = resolve_dtype(cfg.model.dtype)  # the run's dtype, so scores compare with its own evals
    dist = init_distributed()  # this rank's GPU where there is one
    tokenizer = load_tokenizer(cfg.model)
    domains, _ = check_domains(cfg, tokenizer_fingerprint(tokenizer), dist)
    tracker = Tracker(folder.parent, cfg.tracking.experiment, enabled=dist.main, uri=cfg.tracking.uri, journal="eval")
    eval_logger = EvalLogger(cfg, open_eval_sets(domains, cfg.eval.split), dist, tokenizer, tracker, folder.parent)
    done_path = folder / DONE
    done = set(json.loads(done_path.read_text())) if done_path.is_file() and not new_run else set()
    state = RunState()  # baseline and history across the checkpoints; step and tokens_seen per checkpoint
    scored: list[int] = []
    try:
        while True:
            todo, everything = listing(folder, done, dist.world)
            for step, name, kind in todo:
                marker = unless_pruned(folder, name, done, lambda: checkpoint.verify(  # the ranks share it
                    folder, name, fast=fast, rank=dist.rank, share=dist.world) if kind == "deepspeed" else {})
                if marker is None:
                    continue
                if tracker.enabled and tracker.journal_key is None:
                    tracker.start(f"{cfg.run.name}-eval" if new_run else cfg.tracking.run_name or cfg.run.name,
                                  None if new_run else marker.get("mlflow_run_id"), reopen=False)
                if state.baseline is None:
                    score_baseline(eval_logger, state, cfg, dist, list(domains), new_run)
                t0 = time.time()
                model = unless_pruned(folder, name, done, lambda: checkpoint_model(folder, name, kind, cfg, dist))
                if model is None:
                    continue
                state.step, state.tokens_seen = step, marker.get("tokens_seen")
                eval_logger.evaluate_and_log(model.eval(), state)
                model = None  # freed before the next one is built
                scored.append(step)
                done.add(name)
                stop_together(failure_of(write_atomic, done_path, json.dumps(sorted(done))) if dist.main else None,
                              dist)
                if dist.main:
                    log(f"evaluated {name} (step {step}) in {time.time() - t0:.1f}s")
            finished = until_step is not None and any(s >= until_step for s, _, _ in everything) and \
                all(c[1] in done for c in everything)
            if not watch or finished:
                break
            time.sleep(poll)
        eval_logger.curves(state, "degradation_eval.png")
    except BaseException as err:
        tracker.close(cfg.tracking.wait_s, err)
        raise
    tracker.close(cfg.tracking.wait_s)
    return scored


def score_baseline(eval_logger: EvalLogger, state: RunState, cfg: Config, dist: Dist, domains: list[str],
                   new_run: bool) -> None:
    """Step 0: from the run's cached per-token baseline, or by scoring the base model (and caching it) if missing."""
    cached = None if new_run else baseline_from_cache(eval_logger.cache, domains)
    if cached is not None:
        state.baseline = cached
        return
    base_model = shared_model(lambda: load_model(cfg.model), cfg.model.path, cfg.model, dist, "the base model").eval()
    state.step, state.tokens_seen = 0, 0
    eval_logger.evaluate_and_log(base_model, state)


def announce_scored(steps: list[int]) -> int:
    """The closing line of `odyssey eval`; its exit code."""
    log(f"evaluated {len(steps)} checkpoint(s): steps {steps}" if steps else
        "no new complete checkpoint to evaluate")
    return 0
