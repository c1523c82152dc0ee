"""The training loop, top to bottom: build → baseline eval → for each step: batch, forward, backward, step, log, maybe
eval, maybe save. One process per device, started by `deepspeed`, srun or torchrun (or alone, as a world of one).

    deepspeed --num_gpus 2 -m trainer.train CONFIG.yaml [dotted.key=value ...] [--resume auto]
"""
from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
import warnings

import numpy as np
import torch
import yaml

from data_prep.manifest import tokenizer_fingerprint
from trainer import checkpoint
from trainer.config import Config, load_config
from trainer.data import Batches, build_train_loader, check_domains, open_eval_sets
from trainer.engine import build_engine, fill_ds_config, init_distributed, parameter_counts
from trainer.evaluate import evaluate
from trainer.model import load_model, load_tokenizer
from trainer.plots import degradation_curves
from trainer.tracking import Tracker, params_for


# torch 2.14 deprecates the collectives DeepSpeed 0.19 calls on every step; the warning says nothing to our users.
warnings.filterwarnings("ignore", message=r"`torch\.distributed\.\w+` is deprecated", category=FutureWarning)


def log(rank: int, msg: str) -> None:
    if rank == 0:
        print(f"[odyssey] {msg}", flush=True)


def mean_across_ranks(value: float, world: int) -> float:
    if world == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    torch.distributed.all_reduce(t)
    return t.item() / world


def eval_metrics(results: dict, baseline: dict) -> dict[str, float]:
    out = {}
    for name, r in results.items():
        out[f"eval/{name}/loss"] = r["loss"]
        out[f"eval/{name}/ppl"] = r["ppl"]
        out[f"eval/{name}/ppl_ratio"] = r["ppl"] / baseline[name]["ppl"]
        out[f"eval/{name}/delta_loss"] = r["loss"] - baseline[name]["loss"]
    return out


def train(cfg: Config, resume: str | None = None) -> dict:
    rank, world = init_distributed()
    random.seed(cfg.run.seed + rank)
    np.random.seed(cfg.run.seed + rank)
    torch.manual_seed(cfg.run.seed)
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    run_dir = cfg.run_dir
    ckpt_root = run_dir / "checkpoints"

    # --- build: data checks first (cheap), then the model under ZeRO-3, then the loader
    tokenizer = load_tokenizer(cfg.model)
    domains, seq_len = check_domains(cfg, tokenizer_fingerprint(tokenizer))
    from transformers import AutoConfig

    hf_config = AutoConfig.from_pretrained(cfg.model.path, trust_remote_code=cfg.model.trust_remote_code)
    ds_config = fill_ds_config(cfg, world, getattr(hf_config, "hidden_size", None))
    tag = checkpoint.resolve(ckpt_root, resume) if resume else ""
    if not resume:
        checkpoint.check_fresh_start(ckpt_root)
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
    engine, _, scheduler, _dschf = build_engine(cfg, ds_config, lambda: load_model(cfg.model))
    loader = build_train_loader(cfg, domains)
    eval_sets = open_eval_sets(domains, cfg.eval.split)
    tokens_per_step = cfg.data.micro_batch * seq_len * cfg.optim.accumulation * world
    eval_mb = cfg.eval.micro_batch or cfg.data.micro_batch

    state = {"step": 0, "tokens_seen": 0, "mlflow_run_id": None, "baseline": None, "history": []}
    if tag:
        client = checkpoint.load(engine, ckpt_root, tag, rank, world)
        state.update({k: client[k] for k in state})
        loader.load_state_dict(client["loader"])
        log(rank, f"resumed from {ckpt_root / tag} at step {state['step']} ({state['tokens_seen']:,} tokens seen)")

    tracker = Tracker(run_dir, cfg.tracking.experiment, enabled=rank == 0)
    state["mlflow_run_id"] = tracker.start(cfg.tracking.run_name or cfg.run.name, state["mlflow_run_id"],
                                           tags=cfg.tracking.tags)
    if rank == 0 and not tag:
        (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
        (run_dir / "ds_config.json").write_text(json.dumps(ds_config, indent=2) + "\n")
        tracker.log_params(params_for(cfg.model_dump(mode="json")))
        n_params, n_local = parameter_counts(engine.module)
        tracker.log_params({"derived.world_size": str(world), "derived.seq_len": str(seq_len),
                            "derived.tokens_per_step": str(tokens_per_step), "derived.params": str(n_params),
                            "derived.params_on_rank0": str(n_local)})
        tracker.log_artifact(run_dir / "config.yaml", "config")
        tracker.log_artifact(run_dir / "ds_config.json", "config")
        for dom in domains.values():
            dst = run_dir / "manifests" / f"{dom.name}.json"
            dst.parent.mkdir(exist_ok=True)
            dst.write_text(json.dumps(dom.manifest, indent=2))
            tracker.log_artifact(dst, "manifests")
    log(rank, f"world {world}, seq_len {seq_len}, {tokens_per_step:,} tokens/step, "
              f"steps {state['step']}→{cfg.run.max_steps}, MLflow run {state['mlflow_run_id']} at {tracker.uri}")

    def run_eval(step: int) -> None:
        t0 = time.time()
        results = evaluate(engine, eval_sets, rank, world, eval_mb, cfg.eval.max_samples, device)
        if state["baseline"] is None:
            state["baseline"] = results
        metrics = eval_metrics(results, state["baseline"])
        metrics["train/tokens_seen"] = state["tokens_seen"]
        tracker.log_metrics(metrics, step)
        state["history"].append({"step": step, "tokens_seen": state["tokens_seen"],
                                 "ppl": {n: r["ppl"] for n, r in results.items()},
                                 "ppl_ratio": {n: metrics[f"eval/{n}/ppl_ratio"] for n in results}})
        table = ", ".join(f"{n} {r['ppl']:.2f}" for n, r in results.items())
        log(rank, f"eval @ step {step} ({time.time() - t0:.1f}s): ppl {table}")

    def save(step: int) -> None:
        t0 = time.time()
        client = {k: state[k] for k in ("step", "tokens_seen", "mlflow_run_id", "baseline", "history")}
        client["loader"] = loader.state_dict()
        path = checkpoint.save(engine, ckpt_root, step, client, rank, world)
        log(rank, f"checkpoint {path} ({time.time() - t0:.1f}s)")

    if state["step"] == 0:
        run_eval(0)  # the baseline: the base model before any update

    # --- the loop
    batches = Batches(loader)
    engine.train()
    stop_at = min(cfg.run.max_steps, cfg.run.halt_at_step or cfg.run.max_steps)
    last_save = state["step"]
    while state["step"] < stop_at:
        t0 = time.time()
        loss_sum = 0.0
        for _ in range(cfg.optim.accumulation):
            tokens = next(batches).to(device)
            loss = engine(input_ids=tokens, labels=tokens).loss
            engine.backward(loss)
            engine.step()
            loss_sum += loss.item()
        state["step"] += 1
        state["tokens_seen"] += tokens_per_step
        step = state["step"]
        loss = mean_across_ranks(loss_sum / cfg.optim.accumulation, world)
        if not math.isfinite(loss):
            log(rank, f"non-finite loss at step {step}")
        if step % cfg.run.log_interval == 0 or step == stop_at:
            dt = time.time() - t0
            grad_norm = engine.get_global_grad_norm()
            metrics = {"train/loss": loss, "train/lr": scheduler.get_last_lr()[0],
                       "train/tokens_per_s": tokens_per_step / dt, "train/tokens_seen": state["tokens_seen"],
                       "train/epoch": batches.epoch}
            if grad_norm is not None:
                metrics["train/grad_norm"] = float(grad_norm)
            tracker.log_metrics(metrics, step)
            log(rank, f"step {step}/{cfg.run.max_steps} loss {loss:.4f} lr {metrics['train/lr']:.2e} "
                      f"{metrics['train/tokens_per_s']:,.0f} tok/s")
        if cfg.eval.interval and step % cfg.eval.interval == 0 or step == cfg.run.max_steps:
            run_eval(step)
            engine.train()
        if cfg.checkpoint.interval and step % cfg.checkpoint.interval == 0:
            save(step)
            last_save = step

    step = state["step"]
    if step != last_save and (step < cfg.run.max_steps or cfg.checkpoint.save_final):
        save(step)
    if rank == 0 and state["history"]:
        png = degradation_curves(state["history"], [s.name for s in cfg.data.streams],
                                 run_dir / "curves" / "degradation.png")
        tracker.log_artifact(png, "curves")
    if step >= cfg.run.max_steps:
        tracker.end("FINISHED")
        log(rank, f"done: {step} steps, {state['tokens_seen']:,} tokens; run folder {run_dir}")
    else:
        log(rank, f"halted at step {step} (run.halt_at_step); resume with --resume auto")
    return state


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="odyssey train", description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("overrides", nargs="*", help="dotted.key=value")
    parser.add_argument("--resume", nargs="?", const="auto", default=None,
                        help="'auto' (newest complete checkpoint, or start fresh), 'latest', or a tag")
    parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # passed by deepspeed
    args = parser.parse_intermixed_args(argv)
    from trainer.cli import run_guarded

    return run_guarded(lambda: train(load_config(args.config, args.overrides), args.resume) and 0)


if __name__ == "__main__":
    sys.exit(main())
