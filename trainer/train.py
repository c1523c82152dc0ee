"""The training loop. A `Trainer` is built once (data checks, loader, model under ZeRO-3, engine, eval sets,
tracker); `fit()` evaluates the base model, then repeats `train_step()` and, on schedule, `evaluate(step)` and
`save(step)`. One process per device, started by `deepspeed`, srun or torchrun (or alone, as a world of one).

    deepspeed --num_gpus 2 --module trainer.train CONFIG.yaml [dotted.key=value ...] [--resume auto]

A batch is {input_ids, labels, sample_ids}; labels are -100 where no loss is taken (continued pretraining: none).
"""
from __future__ import annotations

import contextlib
import gc
import json
import os
import random
import socket
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import yaml

from analysis.stability import log_spaced_steps
from data_prep.console import log
from data_prep.disk import write_atomic
from data_prep.guard import exit_process, guarded
from data_prep.manifest import tokenizer_fingerprint
from data_prep.redact import load_env_file, redact_tree
from trainer import checkpoint
from trainer.args import rank_args, train_arguments
from trainer.config import Config, ConfigError, load_config
from trainer.data import (BASE_LOSSES, Batches, build_train_loader, check_domains, drop_excluded, excluded_targets,
                          model_inputs, open_eval_sets)
from trainer.dist import failure_of, init_distributed, stop_together
from trainer.engine import build_engine, choose_optimizer, fill_ds_config, parameter_counts, retrace_zero3
from trainer.ledger import Ledger
from trainer.loss import LossHead, head_loss_supported
from trainer.meter import Meter, detect_peak_tflops, flops_per_token
from trainer.model import DTYPES, load_model, load_tokenizer, resolve_dtype
from trainer.plan import (apply_stage, check_model_limits, device_bytes, model_config, model_shape, tokens_per_step,
                          total_steps)
from trainer.preempt import StopRequest
from trainer.scoring import check_scored, stream_scores
from trainer.state import FINISHED, RunState
from trainer.step_stats import StepStats
from trainer.tracking import Tracker, params_for
from trainer.eval_logger import EvalLogger
from trainer.weight_delta import WeightDelta

GC_EVERY = 50  # steps between collections of Python's young generations while training (torchtitan's gc_freq)


@contextlib.contextmanager
def gc_between_steps():
    """Python's cyclic garbage collector off inside the loop, collected on a schedule instead: an automatic
    collection may land in any step, and the older generations it scans hold everything torch, transformers,
    DeepSpeed and MLflow created at import and set-up (frozen here once, so no collection scans them again)."""
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.unfreeze()


# torch 2.14 deprecates the collectives DeepSpeed 0.19 calls on every step; the warning says nothing to our users.
warnings.filterwarnings("ignore", message=r"`torch\.distributed\.\w+` is deprecated", category=FutureWarning)


def eval_steps(cfg: Config, max_steps: int) -> set[int]:
    """Steps after which to evaluate (step 0, the baseline, always runs first)."""
    if cfg.eval.log_spaced:
        return set(log_spaced_steps(max_steps, cfg.eval.log_spaced))
    if cfg.eval.interval:
        return set(range(cfg.eval.interval, max_steps + 1, cfg.eval.interval)) | {max_steps}
    return {max_steps}


class Trainer:
    def __init__(self, cfg: Config, resume: str | None = None):
        self.dist = init_distributed()
        # every rank says where it runs: on a multi-node launch this is the proof each node took part
        log(f"rank {self.dist.rank}/{self.dist.world} (local {self.dist.local_rank}) on {socket.gethostname()} "
            f"pid {os.getpid()}, master {os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}",
            every_rank=True)
        random.seed(cfg.run.seed + self.dist.rank)
        np.random.seed(cfg.run.seed + self.dist.rank)
        torch.manual_seed(cfg.run.seed)
        cfg.model.dtype = resolve_dtype(cfg.model.dtype)  # `auto` → what this device runs best; config.yaml says which
        self.cfg, self.run_dir = cfg, cfg.run_dir
        self.ckpt_root = self.run_dir / "checkpoints"
        self.stop_request = StopRequest()
        self.state = RunState()
        checkpoint.check_shared(self.run_dir, self.dist)
        tokenizer = load_tokenizer(cfg.model)  # data checks first: cheap, and they fail before any weight loads
        self.domains, self.seq_len = check_domains(cfg, tokenizer_fingerprint(tokenizer), self.dist)
        check_scored(cfg, self.domains)  # loss.select_top: the base model's losses stored with every stream
        self.hf_config = model_config(cfg.model.path, cfg.model.trust_remote_code)
        check_model_limits(cfg.model, self.hf_config, self.seq_len, len(tokenizer))
        self.excluded = excluded_targets(tokenizer, cfg, self.dist.device)  # loss.exclude_categories
        self.ds_config = fill_ds_config(cfg, self.dist.world)  # checked by DeepSpeed's config model, as the CLI does
        tag = checkpoint.starting_tag(self.ckpt_root, resume, self.dist, cfg.checkpoint.verify == "fast")
        set_aside = checkpoint.set_aside_newer(self.ckpt_root, tag) if tag and self.dist.main else None
        if self.dist.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if not tag:
                (self.run_dir / FINISHED).unlink(missing_ok=True)
        self._build_engine()
        self.ledger = Ledger(self.run_dir, self.dist.rank)
        if tag:
            self._resume(tag)
        # no records past the checkpoint (those steps run again), none at all on a fresh start (it owns the folder)
        problem = failure_of(self.ledger.truncate_after, self.state.step)
        self.tracker = Tracker(self.run_dir, cfg.tracking.experiment, enabled=self.dist.main, uri=cfg.tracking.uri)
        self.state.mlflow_run_id = self.tracker.start(cfg.tracking.run_name or cfg.run.name, self.state.mlflow_run_id,
                                                      tags=cfg.tracking.tags,
                                                      resume_step=self.state.step if tag and not set_aside else None)
        try:  # from here on a failure ends the MLflow run as FAILED rather than leaving it RUNNING
            if set_aside:
                self._note_rewind(set_aside)
            if self.dist.main and not tag:
                problem = problem or failure_of(self._record_run)
            stop_together(problem or self.tracker.write_problem, self.dist)
            self.eval_logger = EvalLogger(cfg, open_eval_sets(self.domains, cfg.eval.split), self.dist, tokenizer,
                                       self.tracker, self.run_dir, self._weight_delta(tag))
            self.evals_at = eval_steps(cfg, self.max_steps)
            self.stats = StepStats(self.dist, cfg.optim.spike_factor)
            self._announce()
        except BaseException as err:
            self.tracker.close(cfg.tracking.wait_s, err)
            raise

    def _build_engine(self) -> None:
        """The loader first (its length sets the step count of an epochs-based run), then the model under ZeRO-3."""
        cfg = self.cfg
        self.stage_choice = self._choose_stage()
        self.optimizer_choice = choose_optimizer(self.ds_config, self.dist.device)
        self.loader = build_train_loader(cfg, self.domains, self.dist.device, stream_scores(cfg, self.domains))
        self.batches = Batches(self.loader)
        self.tokens_per_step = tokens_per_step(cfg, self.seq_len, self.dist.world)
        self.max_steps = total_steps(cfg, self.tokens_per_step, len(self.loader.dataset))
        self.engine, self.scheduler, self.zero3_init = build_engine(cfg, self.ds_config, lambda: load_model(cfg.model),
                                                                   self.max_steps)
        if cfg.model.compile:
            self.engine.compile()  # torch.compile through DeepSpeed, which keeps ZeRO's hooks out of the graphs
        if self.engine.device != self.dist.device:
            raise RuntimeError(f"DeepSpeed placed the engine on {self.engine.device}, this rank chose "
                               f"{self.dist.device}")
        if cfg.loss.select_top is not None and not isinstance(self.engine.module.get_output_embeddings(), LossHead):
            raise ConfigError(f"loss.select_top selects inside the head loss, which this model cannot use "
                              f"({head_loss_supported(self.engine.module)})")
        self.n_params, self.n_local = parameter_counts(self.engine.module)
        self.attn_impl = self.engine.module.config._attn_implementation  # how packed task rows are masked
        self.dtype = DTYPES[cfg.model.dtype]
        self.flops_token = flops_per_token(self.hf_config, self.n_params, self.seq_len)
        self.peak_tflops = cfg.meter.peak_tflops or detect_peak_tflops(cfg.model.dtype)
        self.meter = Meter(self.tokens_per_step, self.dist.world, self.flops_token, self.peak_tflops)

    def _choose_stage(self) -> str:
        """Apply deepspeed.stage to the resolved JSON (auto: from the model's size and one device's memory)."""
        total = largest = 0
        if self.cfg.deepspeed.stage == "auto":
            total, largest = model_shape(self.cfg.model.path, self.cfg.model.trust_remote_code, self.hf_config)
        local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        return apply_stage(self.cfg, self.ds_config, total, largest, local, max(1, self.dist.world // local),
                           device_bytes(local)[0])

    def _resume(self, tag: str) -> None:
        t0 = time.time()
        saved = checkpoint.load(self.engine, self.ckpt_root, tag, self.dist.rank)
        self.state = RunState.from_dict(saved)
        self.loader.load_state_dict(saved["loader"])
        save_s = json.loads((self.ckpt_root / tag / checkpoint.COMPLETE).read_text()).get("save_s")
        log(f"resumed from {self.ckpt_root / tag} at step {self.state.step} ({self.state.tokens_seen:,} "
            f"tokens seen; loaded in {time.time() - t0:.1f}s, saved in {save_s}s)")
        self._check_grace(save_s)

    def _note_rewind(self, set_aside: Path) -> None:
        """A resume from a checkpoint older than the newest: MLflow cannot delete the points the abandoned attempt
        logged past it, so this attempt logs those steps again beside them, and the run says so."""
        step = self.state.step
        log(f"resumed from step {step}, older than the newest checkpoint: the newer ones were moved to "
            f"{set_aside} (nothing deleted); MLflow keeps the points logged past step {step} by the "
            f"abandoned attempt, and this one logs those steps again (tag odyssey.rewound_to)")
        self.tracker.set_tag("odyssey.rewound_to", f"step {step}; abandoned checkpoints in {set_aside}")

    def _record_run(self) -> None:
        """Rank 0 of a fresh run: what ran (resolved config, DeepSpeed JSON, manifests) into the folder and MLflow."""
        run_dir, tracker = self.run_dir, self.tracker
        tree = self.cfg.model_dump(mode="json")
        tree["tracking"]["uri"] = self.cfg.tracking.uri and tracker.uri  # without credentials (they are in the env)
        write_atomic(run_dir / "config.yaml", yaml.safe_dump(redact_tree(tree), sort_keys=False))
        write_atomic(run_dir / "ds_config.json", json.dumps(self.ds_config, indent=2) + "\n")
        tracker.log_params(params_for(tree))
        derived = {"world_size": self.dist.world, "seq_len": self.seq_len, "tokens_per_step": self.tokens_per_step,
                   "total_steps": self.max_steps, "params": self.n_params, "params_on_rank0": self.n_local,
                   "flops_per_token": f"{self.flops_token:.4g}", "peak_tflops": self.peak_tflops}
        tracker.log_params({f"derived.{k}": str(v) for k, v in derived.items()})
        tracker.log_artifact(run_dir / "config.yaml", "config")
        tracker.log_artifact(run_dir / "ds_config.json", "config")
        for dom in self.domains.values():
            dst = write_atomic(run_dir / "manifests" / f"{dom.name}.json", json.dumps(dom.manifest, indent=2))
            tracker.log_artifact(dst, "manifests")

    def _weight_delta(self, resumed_from: str | None) -> WeightDelta | None:
        """On task data (task.weight_delta): the base weights' snapshot, reloaded on resume."""
        if not (self.cfg.task.weight_delta and any(d.manifest.get("kind") == "task" for d in self.domains.values())):
            return None
        delta = WeightDelta(self.run_dir, self.dist)
        if resumed_from:
            loaded = torch.tensor([float(delta.load())], device=self.dist.device)
            if self.dist.world > 1:  # every rank measures, or none: measure() is a collective
                torch.distributed.all_reduce(loaded, op=torch.distributed.ReduceOp.MIN)
            if not loaded.item():
                delta.base = None
                log(f"no base-weight snapshot for world size {self.dist.world} in {delta.path.parent}: "
                    f"weights/mean_abs_delta is not logged in this attempt")
        return delta

    def _announce(self) -> None:
        log(f"world {self.dist.world}, {self.n_params / 1e6:.1f}M params ({self.n_local / 1e6:.1f}M on rank 0), "
            f"seq_len {self.seq_len}, {self.tokens_per_step:,} tokens/step, steps {self.state.step}→"
            f"{self.max_steps}, MLflow run {self.state.mlflow_run_id} at {self.tracker.uri}")
        log(f"device {self.dist.device}, {self.cfg.model.dtype}, {self.stage_choice}, attention "
            f"{self.attn_impl}, {self.optimizer_choice}, " + ("torch.compile, " if self.cfg.model.compile else "")
            + f"{self.loader.num_workers} loader worker(s) per rank"
            + (", pinned batches" if self.loader.pin_memory else ""))

    # --- the step
    def train_step(self) -> tuple[float, int, bool, np.ndarray]:
        """One optimizer step over `optim.accumulation` micro-batches. The losses stay on the device; the step's one
        collective (before its last backward) agrees on the mean loss, bad losses and a stop request across ranks.
        Returns (mean loss, bad micro-batches on all ranks, stop requested, the sample ids consumed)."""
        accumulation = self.cfg.optim.accumulation
        used = []
        self.stats.begin(self.state.loss_ema)
        for micro in range(accumulation):
            batch = next(self.batches)
            used.append(batch.pop("sample_ids"))
            on_device = {k: v.to(self.dist.device, non_blocking=True) for k, v in batch.items()}
            if self.excluded is not None:
                on_device["labels"] = drop_excluded(on_device["labels"], self.excluded)
            base = on_device.pop(BASE_LOSSES, None)  # loss.select_top: Rho-1 selection in the head loss
            inputs = model_inputs(on_device, self.attn_impl, self.dtype)
            loss = self.engine(**inputs, **({} if base is None else {"select": (base, self.cfg.loss.select_top)})).loss
            self.stats.add(loss)
            if micro == accumulation - 1:  # a bad loss anywhere turns this one into NaN: DeepSpeed skips the update
                loss = loss * self.stats.agree(self.stop_request.signum is not None)
            self.engine.backward(loss)
            self.engine.step()
        loss, n_bad, stop = self.stats.result(accumulation)
        return loss, n_bad, stop, np.concatenate(used)

    def _count_update(self, loss: float, sample_ids: np.ndarray) -> None:
        state = self.state
        state.step += 1
        state.tokens_seen += self.tokens_per_step
        state.loss_ema = loss if state.loss_ema is None else 0.9 * state.loss_ema + 0.1 * loss
        self.ledger.record(state.step, sample_ids)
        self.meter.steps += 1

    def _skip_update(self, n_bad: int, sample_ids: np.ndarray) -> str | None:
        """A step whose update DeepSpeed skipped; its samples were consumed, not trained on (ledger step -N). Bad
        losses count against optim.bad_loss / max_skipped; a skip DeepSpeed made on its own (non-finite gradients
        from a finite loss, an fp16 loss-scale overflow) does not. Returns why the run must stop, or None."""
        attempt = self.state.step + 1
        self.ledger.record(-attempt, sample_ids)
        if not n_bad:
            log(f"step {attempt}: DeepSpeed skipped the update (non-finite gradients); the step is repeated")
            return None
        if self.engine.was_step_applied():
            raise ConfigError(f"step {attempt}: DeepSpeed applied an update from a bad loss; this DeepSpeed config "
                              f"does not skip non-finite steps (use ZeRO stage 1-3, or bf16/fp16)")
        self.state.skipped += 1
        skipped, optim = self.state.skipped, self.cfg.optim
        log(f"step {attempt}: bad loss in {n_bad} micro-batch(es), update skipped ({skipped} so far)")
        self.tracker.log_metrics({"train/skipped_steps": skipped}, attempt)
        if optim.bad_loss == "stop" or skipped > optim.max_skipped:
            return f"bad loss (optim.bad_loss={optim.bad_loss}, {skipped} skipped)"
        return None

    def log_step(self, loss: float) -> None:
        """Throughput over the steps since the last log (eval and checkpoint time excluded), loss, LR, grad norm."""
        step = self.state.step
        tokens_per_s, util = self.meter.read()
        metrics = {"train/loss": loss, "train/lr": self.scheduler.get_last_lr()[0], "train/tokens_per_s": tokens_per_s,
                   "train/tokens_per_s_per_device": tokens_per_s / self.dist.world,
                   "train/epoch": self.batches.epoch}
        grad_norm = self.engine.get_global_grad_norm()  # a device scalar under ZeRO: read on log steps only
        if grad_norm is not None:
            metrics["train/grad_norm"] = float(grad_norm)
        if util is not None:
            metrics["train/mfu"] = util
        self.tracker.log_metrics(metrics, step, tokens_seen=self.state.tokens_seen)
        log(f"step {step}/{self.max_steps} loss {loss:.4f} lr {metrics['train/lr']:.2e} "
            f"{tokens_per_s:,.0f} tok/s" + (f" mfu {util:.1%}" if util is not None else ""))

    # --- eval and save
    def evaluate(self, step: int) -> None:
        assert step == self.state.step, "evaluate the step the run is at"
        self.eval_logger.evaluate_and_log(self.engine, self.state)
        self.engine.train()
        retrace_zero3(self.engine)  # the next training step records ZeRO-3's fetch trace, not the eval's forwards
        self.meter.start_clock()  # eval time is not training time

    def save(self, step: int) -> None:
        t0 = time.time()
        self._flush_ledger()
        self.state.mlflow_run_id = self.tracker.run_id or self.state.mlflow_run_id  # the real id once it exists
        client = {**self.state.to_dict(), "loader": self.loader.state_dict()}
        path, seconds = checkpoint.save(self.engine, self.ckpt_root, step, client, self.dist)
        self.tracker.log_metrics({"checkpoint/save_s": seconds}, step)
        if self.dist.main:
            pruned = checkpoint.prune(self.ckpt_root, self.cfg.checkpoint.keep_last, self.cfg.checkpoint.keep_every)
            log(f"checkpoint {path} ({time.time() - t0:.1f}s)" + (f"; removed {pruned}" if pruned else ""))
        self._check_grace(seconds)
        self.meter.start_clock()

    def _flush_ledger(self) -> None:
        """Every rank writes its own ledger; they agree on a full disk there (or in rank 0's tracking, noted since
        the last eval or save), so all of them stop together before the save with its line."""
        stop_together(failure_of(self.ledger.flush) or self.tracker.write_problem, self.dist)

    def _check_grace(self, save_s: float | None) -> None:
        """A save that cannot finish between the stop signal and SIGKILL loses everything since the last one."""
        grace = self.cfg.checkpoint.grace_s
        if grace and save_s and save_s > 0.8 * grace:
            log(f"warning: a checkpoint takes {save_s:.1f}s, checkpoint.grace_s is {grace:g}s: a "
                f"preemption would kill the save; signal earlier (sbatch --signal=B:USR1@"
                f"{int(2 * save_s) + 60}) or save more often (docs/TRAINING.md, Preemption)")

    # --- the loop
    def fit(self) -> str | None:
        """Train to the last step (or run.halt_at_step, a signal, a bad-loss stop). Returns what stopped it early."""
        if self.state.step == 0:
            self.evaluate(0)  # the baseline: the base model before any update
        self.engine.train()
        stop_at = min(self.max_steps, self.cfg.run.halt_at_step or self.max_steps)
        self.meter.start_clock()
        with gc_between_steps():
            stopped_by, last_save = self._loop(stop_at)
        self._finish(last_save, stopped_by)
        return stopped_by

    def _loop(self, stop_at: int) -> tuple[str | None, int]:
        """The steps; returns (what stopped them early, the step last saved)."""
        cfg, state = self.cfg, self.state
        last_save = state.step
        while state.step < stop_at:
            loss, n_bad, stop, sample_ids = self.train_step()
            if n_bad or not self.engine.was_step_applied():  # DeepSpeed skipped the update: consumed, not trained on
                stopped_by = self._skip_update(n_bad, sample_ids) or (self.stop_request.name if stop else None)
                if stopped_by:
                    return stopped_by, last_save
                continue
            self._count_update(loss, sample_ids)
            step = state.step
            if step % GC_EVERY == 0:
                gc.collect(1)
            if step % cfg.run.log_interval == 0 or step == stop_at:
                self.log_step(loss)
            if step in self.evals_at:
                self.evaluate(step)
            if cfg.checkpoint.interval and step % cfg.checkpoint.interval == 0:
                self.save(step)
                last_save = step
            if stop and step < stop_at:
                return self.stop_request.name, last_save
        return None, last_save

    def _finish(self, last_save: int, stopped_by: str | None) -> None:
        """A checkpoint unless the last step was just saved (or the run finished with save_final off), the curves,
        and the FINISHED mark a study waits for."""
        step, state = self.state.step, self.state
        if step != last_save and (step < self.max_steps or self.cfg.checkpoint.save_final):
            self.save(step)
        else:
            self._flush_ledger()
        self.eval_logger.curves(state)
        if step >= self.max_steps:
            self.tracker.end("FINISHED", self.cfg.tracking.wait_s)
            problem = self.tracker.write_problem
            if self.dist.main and not problem:
                mark = {"step": step, "tokens_seen": state.tokens_seen}
                problem = failure_of(write_atomic, self.run_dir / FINISHED, json.dumps(mark) + "\n")
            stop_together(problem, self.dist)  # the job's last agreement: rank 0's last writes, on every rank
            log(f"done: {step} steps, {state.tokens_seen:,} tokens; run folder {self.run_dir}")
            return
        self.tracker.set_tag("odyssey.stopped_by", stopped_by or "run.halt_at_step")
        self.tracker.end("FAILED" if stopped_by and stopped_by.startswith("bad loss") else "KILLED",
                         self.cfg.tracking.wait_s)  # resuming sets it RUNNING again
        stop_together(self.tracker.write_problem, self.dist)
        if stopped_by:
            log(f"stopped at step {step} by {stopped_by}: checkpoint saved; continue with --resume auto")
        else:
            log(f"halted at step {step} (run.halt_at_step); continue with --resume auto")


def run_rank(config: str, overrides: list[str], resume: str | None) -> int:
    """One rank of a training job. Exit 0 when done or stopped by a signal (resumable), 2 for a bad input, 3 when
    bad losses stopped the run."""
    def run() -> int:
        trainer = Trainer(load_config(config, overrides), resume)
        try:
            stopped_by = trainer.fit()
        except BaseException as err:  # the MLflow run says how it ended; the error goes on to the guard
            trainer.tracker.close(trainer.cfg.tracking.wait_s, err)
            raise
        return 3 if stopped_by and stopped_by.startswith("bad loss") else 0

    load_env_file(os.environ.pop("ODYSSEY_SECRETS_FILE", None))  # secrets a multi-node launch kept off command lines
    return guarded(run)


def main(argv: list[str] | None = None) -> int:
    """`python -m trainer.train`, what launchers start on every rank: `odyssey train`'s arguments, one rank."""
    args = rank_args("odyssey train", train_arguments, argv)
    return run_rank(args.config, args.overrides, args.resume)


if __name__ == "__main__":
    exit_process(main())
