"""`odyssey eval --checkpoints DIR [--watch]`: evaluate checkpoints as they appear, outside the training job.

DIR is a run's `checkpoints/` folder (DeepSpeed ZeRO checkpoints, consolidated in memory with DeepSpeed's
`zero_to_fp32`) or a folder of HF-format checkpoints (subfolders with config.json). Each checkpoint is scored on the
run's eval domains with the same code as in training, single-process or as plain data parallel across the ranks a
launcher starts (each rank holds the whole model, so this is for models that fit one device; larger ones evaluate
inside the training job). Metrics go into the training run (its MLflow run id, at the checkpoint's step) or a new run,
including token statistics against the run's cached step-0 baseline (computed and cached here if missing).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch
import yaml

from trainer import checkpoint
from trainer.checkpoint import CheckpointError
from trainer.config import Config, config_from_dict

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


def load_checkpoint_model(folder: Path, name: str, kind: str, model_cfg):
    from transformers import AutoModelForCausalLM

    from trainer.export import consolidated_model

    if kind == "hf":
        return AutoModelForCausalLM.from_pretrained(folder / name, dtype=torch.float32)
    return consolidated_model(folder, name, model_cfg.path, model_cfg.trust_remote_code)


def run_config(folder: Path, config: str | None) -> Config:
    path = Path(config) if config else folder.parent / "config.yaml"
    if not path.is_file():
        raise CheckpointError(f"no run config: {path} (pass --config for checkpoints outside an Odyssey run folder)")
    return config_from_dict(yaml.safe_load(path.read_text()))


def evaluate_checkpoints(folder: str | Path, config: str | None = None, watch: bool = False, poll: float = 30.0,
                         new_run: bool = False, until_step: int | None = None) -> list[int]:
    from data_prep.manifest import tokenizer_fingerprint
    from trainer.baseline import BaselineCache, model_hash
    from trainer.data import check_domains, open_eval_sets
    from trainer.engine import init_distributed
    from trainer.evaluate import evaluate
    from trainer.model import DTYPES, load_model, load_tokenizer, resolve_dtype
    from trainer.plots import degradation_curves
    from trainer.tokenstats import FUNCTION_WORDS, Vocab
    from trainer.train import eval_metrics, log_token_stats
    from trainer.tracking import Tracker

    folder = Path(folder).resolve()
    while watch and not (folder.is_dir() and (config or (folder.parent / "config.yaml").is_file())):
        time.sleep(poll)  # the training job has not started writing yet
    if not folder.is_dir():
        raise CheckpointError(f"checkpoints folder not found: {folder}")
    cfg = run_config(folder, config)
    cfg.model.dtype = resolve_dtype(cfg.model.dtype)  # the run's dtype, so scores compare with its own evals
    rank, world, device = init_distributed()  # this rank's GPU where there is one
    run_dir = folder.parent
    tokenizer = load_tokenizer(cfg.model)
    domains, _ = check_domains(cfg, tokenizer_fingerprint(tokenizer))
    eval_sets = open_eval_sets(domains, cfg.eval.split)
    mb = cfg.eval.micro_batch or cfg.data.micro_batch
    tracker = Tracker(run_dir, cfg.tracking.experiment, enabled=rank == 0, uri=cfg.tracking.uri)
    cache = BaselineCache(run_dir, model_hash(cfg.model.path))
    words = frozenset(w.lower() for w in cfg.eval.function_words) if cfg.eval.function_words else FUNCTION_WORDS
    vocab = Vocab.from_tokenizer(tokenizer, words) if rank == 0 and cfg.eval.token_stats else None
    done_path = folder / DONE
    done = set(json.loads(done_path.read_text())) if done_path.is_file() and not new_run else set()
    baseline: dict | None = None
    history: list[dict] = []
    scored: list[int] = []
    run_id = None

    def score(model, step: int, tokens_seen: int | None) -> dict:
        results = evaluate(model, eval_sets, rank, world, mb, cfg.eval.max_samples, device,
                           per_token=cfg.eval.token_stats)
        metrics = eval_metrics(results, baseline or {n: {"loss": r.loss, "ppl": r.ppl} for n, r in results.items()})
        if tokens_seen is not None:
            metrics["train/tokens_seen"] = tokens_seen
        if vocab is not None:
            metrics.update(log_token_stats(results, step, cache, vocab, cfg.eval.top_k, run_dir, tracker))
        tracker.log_metrics(metrics, step)
        history.append({"step": step, "tokens_seen": tokens_seen or 0, "ppl": {n: r.ppl for n, r in results.items()},
                        "ppl_ratio": {n: metrics[f"eval/{n}/ppl_ratio"] for n in results}})
        return results

    while True:
        pending = [c for c in list_checkpoints(folder) if c[1] not in done]
        for step, name, kind in pending:
            marker = json.loads((folder / name / checkpoint.COMPLETE).read_text()) if kind == "deepspeed" else {}
            if run_id is None:
                run_id = tracker.start(f"{cfg.run.name}-eval" if new_run else cfg.tracking.run_name or cfg.run.name,
                                       None if new_run else marker.get("mlflow_run_id"))
            if baseline is None:
                base_model = load_model(cfg.model).to(device).eval()  # step 0: the base model (cached per token if missing)
                base = score(base_model, 0, 0) if new_run or not _has_baseline(cache, domains) else None
                baseline = {n: {"loss": r.loss, "ppl": r.ppl} for n, r in base.items()} if base else \
                    _baseline_from_cache(cache, domains)
                del base_model
            t0 = time.time()
            model = load_checkpoint_model(folder, name, kind, cfg.model).to(device, DTYPES[cfg.model.dtype]).eval()
            score(model, step, marker.get("tokens_seen"))
            scored.append(step)
            done.add(name)
            if rank == 0:
                done_path.write_text(json.dumps(sorted(done)))
                print(f"[odyssey] evaluated {name} (step {step}) in {time.time() - t0:.1f}s", flush=True)
        finished = until_step is not None and any(s >= until_step for s, _, _ in list_checkpoints(folder)) and \
            not [c for c in list_checkpoints(folder) if c[1] not in done]
        if not watch or finished:
            break
        time.sleep(poll)
    if rank == 0 and history:
        png = degradation_curves(history, [s.name for s in cfg.data.streams], run_dir / "curves" / "degradation_eval.png")
        tracker.log_artifact(png, "curves")
    tracker.flush()
    return scored


def _has_baseline(cache, domains) -> bool:
    return all((cache.dir / f"{n}.npy").is_file() for n in domains)


def _baseline_from_cache(cache, domains) -> dict:
    """Step-0 loss and ppl per domain from the cached per-token losses (token-weighted mean, as in evaluate)."""
    import math

    import numpy as np

    out = {}
    for n in domains:
        loss = float(np.load(cache.dir / f"{n}.npy").astype(np.float64).mean())
        out[n] = {"loss": loss, "ppl": math.exp(min(loss, 80.0))}
    return out


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="evaluate checkpoints outside the training job",
                       description=__doc__.splitlines()[0])
    p.add_argument("--checkpoints", required=True, help="a run's checkpoints/ folder, or a folder of HF checkpoints")
    p.add_argument("--config", help="run config (default: the run folder's config.yaml)")
    p.add_argument("--watch", action="store_true", help="keep polling for new checkpoints")
    p.add_argument("--poll", type=float, default=30.0, help="seconds between polls with --watch")
    p.add_argument("--until-step", type=int, help="with --watch: stop once a checkpoint at this step is evaluated")
    p.add_argument("--new-run", action="store_true", help="log into a new MLflow run instead of the training run")
    p.set_defaults(func=lambda a: _report(evaluate_checkpoints(a.checkpoints, a.config, a.watch, a.poll, a.new_run,
                                                               a.until_step)))


def _report(steps: list[int]) -> int:
    if int(os.environ.get("RANK", "0")):
        return 0
    print(f"[odyssey] evaluated {len(steps)} checkpoint(s): steps {steps}" if steps else
          "[odyssey] no new complete checkpoint to evaluate")
    return 0


if __name__ == "__main__":  # under a launcher: python -m trainer.checkpoint_eval --checkpoints DIR
    import argparse
    import sys

    from trainer.cli import run_guarded

    parser = argparse.ArgumentParser(prog="odyssey eval")
    add_parser(parser.add_subparsers(dest="verb", required=True))
    args = parser.parse_args(["eval", *[a for a in sys.argv[1:] if not a.startswith("--local_rank")]])
    sys.exit(run_guarded(lambda: args.func(args)))
