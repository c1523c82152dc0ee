"""The training loop, top to bottom: build → baseline eval → for each step: batch, forward, backward, step, log, maybe
eval, maybe save. One process per device, started by `deepspeed`, srun or torchrun (or alone, as a world of one).

    deepspeed --num_gpus 2 -m trainer.train CONFIG.yaml [dotted.key=value ...] [--resume auto]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import socket
import sys
import time
import warnings

import numpy as np
import torch
import yaml

from data_prep.manifest import tokenizer_fingerprint
from trainer import checkpoint
from trainer.config import Config, ConfigError, load_config
from trainer.data import Batches, build_train_loader, check_domains, open_eval_sets
from trainer.engine import build_engine, choose_optimizer, fill_ds_config, init_distributed, parameter_counts
from trainer.step_stats import StepStats
from trainer.evaluate import evaluate
from trainer.ledger import Ledger
from trainer.meter import Meter, detect_peak_tflops, flops_per_token
from trainer.model import load_model, load_tokenizer, resolve_dtype
from trainer.baseline import BaselineCache, model_hash
from trainer.plots import degradation_curves, token_report
from trainer.tokenstats import FUNCTION_WORDS, Vocab, summarize, table_frame
from trainer.preempt import StopRequest
from trainer.tracking import Tracker, params_for

FINISHED = "FINISHED"  # in the run folder, written once the run reached its last step

# torch 2.14 deprecates the collectives DeepSpeed 0.19 calls on every step; the warning says nothing to our users.
warnings.filterwarnings("ignore", message=r"`torch\.distributed\.\w+` is deprecated", category=FutureWarning)


def log(rank: int, msg: str) -> None:
    if rank == 0:
        print(f"[odyssey] {msg}", flush=True)


def eval_metrics(results: dict, baseline: dict) -> dict[str, float]:
    out = {}
    for name, r in results.items():
        out[f"eval/{name}/loss"] = r.loss
        out[f"eval/{name}/ppl"] = r.ppl
        out[f"eval/{name}/ppl_ratio"] = r.ppl / baseline[name]["ppl"]
        out[f"eval/{name}/delta_loss"] = r.loss - baseline[name]["loss"]
    return out


def eval_steps(cfg: Config, max_steps: int) -> set[int]:
    """Steps after which to evaluate (step 0, the baseline, always runs first)."""
    if cfg.eval.log_spaced:
        return set(np.unique(np.round(np.geomspace(1, max_steps, cfg.eval.log_spaced))).astype(int).tolist()) | {
            max_steps}
    if cfg.eval.interval:
        return set(range(cfg.eval.interval, max_steps + 1, cfg.eval.interval)) | {max_steps}
    return {max_steps}


def log_token_stats(results: dict, step: int, base_cache: BaselineCache, vocab: Vocab, top_k: int, run_dir,
                    tracker: Tracker) -> dict[str, float]:
    """Rank 0: cache the baseline at step 0; afterwards compare token by token and log tables, plots, scalars."""
    metrics: dict[str, float] = {}
    for name, r in results.items():
        if step == 0:
            meta = base_cache.save(name, r.targets, r.losses)
            tracker.set_tag(f"baseline.{name}.eval_set_hash", meta["eval_set_hash"])
            tracker.set_tag(f"baseline.{name}.tokens", meta["tokens"])
            tracker.set_tag("baseline.model_hash", meta["model_hash"])
            continue
        base = base_cache.load(name, r.targets)
        if base is None:
            print(f"[odyssey] no step-0 baseline cached for '{name}' matching this eval set; token stats skipped")
            continue
        summary = summarize(r.targets, base, r.losses, vocab, top_k)
        metrics[f"tokens/{name}/topk_share"] = summary["topk_share"]
        for cat, share in summary["category_share"].items():
            metrics[f"tokens/{name}/cat/{cat}_share"] = share
        folder = run_dir / "tokens" / name
        folder.mkdir(parents=True, exist_ok=True)
        table_frame(summary, vocab).to_parquet(folder / f"step_{step}.parquet", index=False)
        keep = ("total_delta", "tokens", "topk_share", "category_share", "category_count", "top_degrading",
                "top_improving", "position")
        (folder / f"step_{step}.json").write_text(json.dumps({k: summary[k] for k in keep}, indent=1))
        token_report(summary, name, step, folder / f"step_{step}.png")
        for suffix in ("parquet", "json", "png"):
            tracker.log_artifact(folder / f"step_{step}.{suffix}", f"tokens/{name}")
    return metrics


def skipped_step(cfg: Config, state: dict, engine, n_bad: int, sample_ids: np.ndarray, ledger: Ledger,
                 tracker: Tracker, rank: int) -> str | None:
    """A step whose update DeepSpeed skipped; its samples were consumed, not trained on (ledger step -N). Bad losses
    count against optim.bad_loss / max_skipped; a skip DeepSpeed made on its own (non-finite gradients from a finite
    loss, an fp16 loss-scale overflow) does not. Returns why the run must stop, or None."""
    attempt = state["step"] + 1
    ledger.record(-attempt, sample_ids)
    if not n_bad:
        log(rank, f"step {attempt}: DeepSpeed skipped the update (non-finite gradients); the step is repeated")
        return None
    if engine.was_step_applied():
        raise ConfigError(f"step {attempt}: DeepSpeed applied an update from a bad loss; this DeepSpeed config does not "
                          f"skip non-finite steps (use ZeRO stage 1-3, or bf16/fp16)")
    state["skipped"] += 1
    log(rank, f"step {attempt}: bad loss in {n_bad} micro-batch(es), update skipped ({state['skipped']} so far)")
    tracker.log_metrics({"train/skipped_steps": state["skipped"]}, attempt)
    if cfg.optim.bad_loss == "stop" or state["skipped"] > cfg.optim.max_skipped:
        return f"bad loss (optim.bad_loss={cfg.optim.bad_loss}, {state['skipped']} skipped)"
    return None


def log_step(state: dict, loss: float, engine, scheduler, epoch: int, meter: Meter, tracker: Tracker, rank: int,
             max_steps: int) -> None:
    """Throughput over the steps since the last log (eval and checkpoint time excluded), loss, LR, grad norm, MFU."""
    step = state["step"]
    tokens_per_s, util = meter.read()
    metrics = {"train/loss": loss, "train/lr": scheduler.get_last_lr()[0], "train/tokens_per_s": tokens_per_s,
               "train/tokens_per_s_per_device": tokens_per_s / meter.world, "train/tokens_seen": state["tokens_seen"],
               "train/epoch": epoch}
    grad_norm = engine.get_global_grad_norm()  # a device scalar under ZeRO: read on log steps only
    if grad_norm is not None:
        metrics["train/grad_norm"] = float(grad_norm)
    if util is not None:
        metrics["train/mfu"] = util
    tracker.log_metrics(metrics, step)
    log(rank, f"step {step}/{max_steps} loss {loss:.4f} lr {metrics['train/lr']:.2e} {tokens_per_s:,.0f} tok/s"
              + (f" mfu {util:.1%}" if util is not None else ""))


def total_steps(cfg: Config, tokens_per_step: int, samples_per_rank_epoch: int) -> int:
    if cfg.run.max_steps:
        return cfg.run.max_steps
    if cfg.run.max_tokens:
        return max(1, -(-cfg.run.max_tokens // tokens_per_step))
    return max(1, int(cfg.run.epochs * samples_per_rank_epoch) // (cfg.data.micro_batch * cfg.optim.accumulation))


def train(cfg: Config, resume: str | None = None) -> dict:
    rank, world, device = init_distributed()
    # every rank says where it runs: on a multi-node launch this is the proof each node took part
    print(f"[odyssey] rank {rank}/{world} (local {os.environ.get('LOCAL_RANK', '0')}) on {socket.gethostname()} "
          f"pid {os.getpid()}, master {os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}", flush=True)
    random.seed(cfg.run.seed + rank)
    np.random.seed(cfg.run.seed + rank)
    torch.manual_seed(cfg.run.seed)
    cfg.model.dtype = resolve_dtype(cfg.model.dtype)  # `auto` → what this device runs best; config.yaml records it
    run_dir = cfg.run_dir
    ckpt_root = run_dir / "checkpoints"
    stop_request = StopRequest()

    # --- build: data checks first (cheap), then the loader, then the model under ZeRO-3
    tokenizer = load_tokenizer(cfg.model)
    domains, seq_len = check_domains(cfg, tokenizer_fingerprint(tokenizer))
    from transformers import AutoConfig

    hf_config = AutoConfig.from_pretrained(cfg.model.path, trust_remote_code=cfg.model.trust_remote_code)
    ds_config = fill_ds_config(cfg, world, getattr(hf_config, "hidden_size", None))
    optimizer_choice = choose_optimizer(ds_config, device)
    tag = checkpoint.starting_tag(ckpt_root, resume, world)
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        if not tag:
            (run_dir / FINISHED).unlink(missing_ok=True)
    loader = build_train_loader(cfg, domains, device)
    eval_sets = open_eval_sets(domains, cfg.eval.split)
    tokens_per_step = cfg.data.micro_batch * seq_len * cfg.optim.accumulation * world
    max_steps = total_steps(cfg, tokens_per_step, len(loader.dataset))
    engine, _, scheduler, _dschf = build_engine(cfg, ds_config, lambda: load_model(cfg.model), max_steps)
    if engine.device != device:
        raise RuntimeError(f"DeepSpeed placed the engine on {engine.device}, this rank selected {device}")
    n_params, n_local = parameter_counts(engine.module)
    flops_token = flops_per_token(hf_config, n_params, seq_len)
    peak_tflops = cfg.meter.peak_tflops or detect_peak_tflops(cfg.model.dtype)
    meter = Meter(tokens_per_step, world, flops_token, peak_tflops)
    eval_mb = cfg.eval.micro_batch or cfg.data.micro_batch
    ledger = Ledger(run_dir, rank)
    if not tag:
        ledger.truncate_after(0)  # a fresh start owns the run folder: no records from an earlier, unfinished attempt
    evals_at = eval_steps(cfg, max_steps)
    token_stats = cfg.eval.token_stats and rank == 0
    if token_stats:
        words = frozenset(w.lower() for w in cfg.eval.function_words) if cfg.eval.function_words else FUNCTION_WORDS
        vocab = Vocab.from_tokenizer(tokenizer, words)
        base_cache = BaselineCache(run_dir, model_hash(cfg.model.path))

    state = {"step": 0, "tokens_seen": 0, "mlflow_run_id": None, "baseline": None, "history": [], "skipped": 0,
             "loss_ema": None}
    if tag:
        t_load = time.time()
        client = checkpoint.load(engine, ckpt_root, tag, rank, world)
        state.update({k: client[k] for k in state if k in client})
        loader.load_state_dict(client["loader"])
        ledger.truncate_after(state["step"])
        log(rank, f"resumed from {ckpt_root / tag} at step {state['step']} ({state['tokens_seen']:,} tokens seen; "
                  f"loaded in {time.time() - t_load:.1f}s)")

    tracker = Tracker(run_dir, cfg.tracking.experiment, enabled=rank == 0, uri=cfg.tracking.uri)
    state["mlflow_run_id"] = tracker.start(cfg.tracking.run_name or cfg.run.name, state["mlflow_run_id"],
                                           tags=cfg.tracking.tags)
    if rank == 0 and not tag:
        (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
        (run_dir / "ds_config.json").write_text(json.dumps(ds_config, indent=2) + "\n")
        tracker.log_params(params_for(cfg.model_dump(mode="json")))
        tracker.log_params({"derived.world_size": str(world), "derived.seq_len": str(seq_len),
                            "derived.tokens_per_step": str(tokens_per_step), "derived.total_steps": str(max_steps),
                            "derived.params": str(n_params), "derived.params_on_rank0": str(n_local),
                            "derived.flops_per_token": f"{flops_token:.4g}", "derived.peak_tflops": str(peak_tflops)})
        tracker.log_artifact(run_dir / "config.yaml", "config")
        tracker.log_artifact(run_dir / "ds_config.json", "config")
        for dom in domains.values():
            dst = run_dir / "manifests" / f"{dom.name}.json"
            dst.parent.mkdir(exist_ok=True)
            dst.write_text(json.dumps(dom.manifest, indent=2))
            tracker.log_artifact(dst, "manifests")
    log(rank, f"world {world}, {n_params / 1e6:.1f}M params ({n_local / 1e6:.1f}M on rank 0), seq_len {seq_len}, "
              f"{tokens_per_step:,} tokens/step, steps {state['step']}→{max_steps}, "
              f"MLflow run {state['mlflow_run_id']} at {tracker.uri}")
    log(rank, f"device {device}, {cfg.model.dtype}, attention {engine.module.config._attn_implementation}, "
              f"{optimizer_choice}, {loader.num_workers} loader worker(s) per rank"
              + (", pinned batches" if loader.pin_memory else ""))

    def run_eval(step: int) -> None:
        t0 = time.time()
        results = evaluate(engine, eval_sets, rank, world, eval_mb, cfg.eval.max_samples, device,
                           per_token=cfg.eval.token_stats)
        if state["baseline"] is None:
            state["baseline"] = {n: {"loss": r.loss, "ppl": r.ppl} for n, r in results.items()}
        metrics = eval_metrics(results, state["baseline"])
        metrics["train/tokens_seen"] = state["tokens_seen"]
        if token_stats:
            metrics.update(log_token_stats(results, step, base_cache, vocab, cfg.eval.top_k, run_dir, tracker))
        tracker.log_metrics(metrics, step)
        state["history"].append({"step": step, "tokens_seen": state["tokens_seen"],
                                 "ppl": {n: r.ppl for n, r in results.items()},
                                 "ppl_ratio": {n: metrics[f"eval/{n}/ppl_ratio"] for n in results}})
        table = ", ".join(f"{n} {r.ppl:.2f}" for n, r in results.items())
        log(rank, f"eval @ step {step} ({time.time() - t0:.1f}s): ppl {table}")
        meter.start_clock()  # eval time is not training time

    def save(step: int) -> None:
        t0 = time.time()
        ledger.flush()
        client = {k: state[k] for k in state}
        client["loader"] = loader.state_dict()
        path = checkpoint.save(engine, ckpt_root, step, client, rank, world)
        if rank == 0:
            pruned = checkpoint.prune(ckpt_root, cfg.checkpoint.keep_last, cfg.checkpoint.keep_every)
            log(rank, f"checkpoint {path} ({time.time() - t0:.1f}s)" + (f"; removed {pruned}" if pruned else ""))
        meter.start_clock()

    if state["step"] == 0:
        run_eval(0)  # the baseline: the base model before any update

    # --- the loop
    batches = Batches(loader)
    engine.train()
    stop_at = min(max_steps, cfg.run.halt_at_step or max_steps)
    stats = StepStats(device, world, cfg.optim.spike_factor)
    last_save = state["step"]
    stopped_by = None
    meter.start_clock()
    while state["step"] < stop_at:
        used = []
        stats.begin(state["loss_ema"])
        for micro in range(cfg.optim.accumulation):
            tokens, sample_ids = next(batches)
            tokens = tokens.to(device, non_blocking=True)
            loss = engine(input_ids=tokens, labels=tokens).loss
            stats.add(loss)
            if micro == cfg.optim.accumulation - 1:  # the step's one collective, before its last backward
                loss = loss * stats.agree(stop_request.signum is not None)
            engine.backward(loss)
            engine.step()
            used.append(sample_ids)
        loss, n_bad, stop = stats.result(cfg.optim.accumulation)
        if n_bad or not engine.was_step_applied():  # DeepSpeed skipped the update: consumed, not trained on
            stopped_by = skipped_step(cfg, state, engine, n_bad, np.concatenate(used), ledger, tracker, rank)
            if stopped_by or stop:
                stopped_by = stopped_by or stop_request.name
                break
            continue
        state["step"] += 1
        state["tokens_seen"] += tokens_per_step
        step = state["step"]
        ledger.record(step, np.concatenate(used))
        state["loss_ema"] = loss if state["loss_ema"] is None else 0.9 * state["loss_ema"] + 0.1 * loss
        meter.steps += 1
        if step % cfg.run.log_interval == 0 or step == stop_at:
            log_step(state, loss, engine, scheduler, batches.epoch, meter, tracker, rank, max_steps)
        if step in evals_at:
            run_eval(step)
            engine.train()
        if cfg.checkpoint.interval and step % cfg.checkpoint.interval == 0:
            save(step)
            last_save = step
        if stop and step < stop_at:
            stopped_by = stop_request.name
            break

    step = state["step"]
    ledger.flush()
    tracker.flush()
    if step != last_save and (step < max_steps or cfg.checkpoint.save_final):
        save(step)
    if rank == 0 and state["history"]:
        png = degradation_curves(state["history"], [s.name for s in cfg.data.streams],
                                 run_dir / "curves" / "degradation.png")
        tracker.log_artifact(png, "curves")
    if step >= max_steps:
        tracker.end("FINISHED")
        if rank == 0:  # the mark a study (sequential or a SLURM array) reads to know this domain is done
            (run_dir / FINISHED).write_text(json.dumps({"step": step, "tokens_seen": state["tokens_seen"]}) + "\n")
        log(rank, f"done: {step} steps, {state['tokens_seen']:,} tokens; run folder {run_dir}")
    elif stopped_by:
        log(rank, f"stopped at step {step} by {stopped_by}: checkpoint saved; continue with --resume auto")
    else:
        log(rank, f"halted at step {step} (run.halt_at_step); continue with --resume auto")
    state["stopped_by"] = stopped_by
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

    def run() -> int:
        state = train(load_config(args.config, args.overrides), args.resume)
        return 3 if state["stopped_by"] and state["stopped_by"].startswith("bad loss") else 0

    return run_guarded(run)


if __name__ == "__main__":
    sys.exit(main())
