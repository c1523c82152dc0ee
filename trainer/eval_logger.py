"""Evaluate a model on the run's eval sets and log how each domain moved against step 0: loss, perplexity, their
ratio and difference to the base model, and (rank 0) which tokens carry the change. The one evaluate-and-log path
of both the training loop (`Trainer.evaluate`) and `odyssey eval --checkpoints`."""
from __future__ import annotations

import time
from pathlib import Path

from analysis.baseline import BaselineCache, model_hash
from analysis.metrics import baseline_of, eval_metrics, function_words
from analysis.plots import degradation_curves
from analysis.stability import gap_metrics
from analysis.tokenstats import TokenStats, Vocab
from data_prep.console import log
from trainer.config import Config
from trainer.dist import Dist, failure_of, stop_together
from trainer.evaluate import DomainEval, evaluate
from trainer.state import RunState
from trainer.task_eval import score_task, task_set
from trainer.tracking import Tracker
from trainer.weight_delta import WeightDelta


class EvalLogger:
    """Scores a model on every eval domain at one step and logs it against step 0 (`evaluate_and_log`), and draws
    the run's curves; built once per run (training) or per `odyssey eval` process."""

    def __init__(self, cfg: Config, eval_sets: dict, dist: Dist, tokenizer, tracker: Tracker, run_dir: Path,
                 weight_delta: WeightDelta | None = None):
        self.eval_sets, self.dist, self.tracker = eval_sets, dist, tracker
        self.weight_delta = weight_delta  # the training run's: snapshot at step 0, measured at later evals
        self.task_cfg = cfg.task
        self.task_sets = {name: task_set(name, es.task, es.rows, tokenizer) for name, es in eval_sets.items()
                          if es.task is not None and cfg.task.examples}
        self.micro_batch = cfg.eval.micro_batch or cfg.data.micro_batch
        self.max_samples = cfg.eval.max_samples
        self.per_token = cfg.eval.token_stats
        self.run_dir = Path(run_dir)  # where baseline/, tokens/ and curves/ go
        self.train_domains = [s.name for s in cfg.data.streams]
        self.cache = BaselineCache(self.run_dir, model_hash(cfg.model.path))  # every rank reads it (checkpoint eval)
        self.token_stats = None
        if cfg.eval.token_stats and dist.main:
            vocab = Vocab.from_tokenizer(tokenizer, function_words(cfg.eval.function_words))
            self.token_stats = TokenStats(self.run_dir, self.cache, vocab, cfg.eval.top_k,
                                          (cfg.eval.transitions.threshold, cfg.eval.transitions.value))

    def evaluate_and_log(self, model, state: RunState) -> dict[str, DomainEval]:
        """Score `model` at `state.step`; the first call sets `state.baseline`. Logs metrics, token-statistics files
        and tags, and appends to `state.history`. Every rank passes its end, so the ranks agree there on a write
        that met a full disk (rank 0's token tables or baseline cache, its tracking journal or store): all of them
        stop with its line (DiskFull's) rather than the others waiting in their next collective."""
        t0 = time.time()
        results = evaluate(model, self.eval_sets, self.dist, self.micro_batch, self.max_samples,
                           per_token=self.per_token)
        if state.baseline is None:
            state.baseline = baseline_of(results)
        metrics = eval_metrics(results, state.baseline)
        task_metrics, problem = self.task_metrics(model, state.step)
        metrics.update(task_metrics)
        token_metrics, tags, files = {}, {}, []
        if self.token_stats is not None:
            try:
                token_metrics, tags, files = self.token_stats(results, state.step)
            except Exception as err:  # a full disk, or a bug: the other ranks wait for it below
                problem = problem or err  # (this eval runs again on resume, its token statistics with it)
        metrics.update(token_metrics)
        point = {"step": state.step, "tokens_seen": state.tokens_seen or 0,
                 "ppl": {n: r.ppl for n, r in results.items()},
                 "ppl_ratio": {n: metrics[f"eval/{n}/ppl_ratio"] for n in results}}
        metrics.update(gap_metrics(state.history + [point]))
        for key, value in tags.items():
            self.tracker.set_tag(key, value)
        for path, folder in files:
            self.tracker.log_artifact(path, folder)
        self.tracker.log_metrics(metrics, state.step, tokens_seen=state.tokens_seen)
        stop_together(problem or self.tracker.write_problem, self.dist)
        state.history.append(point)
        table = ", ".join(f"{n} {r.ppl:.2f}" for n, r in results.items())
        table += "".join(f", {k.split('/', 1)[1]} {v:.4g}" for k, v in metrics.items() if k.startswith(("task/", "weights/")))
        log(f"eval @ step {state.step} ({time.time() - t0:.1f}s): ppl {table}")
        return results

    def task_metrics(self, model, step: int) -> tuple[dict[str, float], Exception | None]:
        """Task domains: `task/<domain>/<rouge_l|accuracy>` on the first `task.examples` held-out examples (0-shot),
        and the mean |Δw| to the base model (`weights/mean_abs_delta`; step 0 takes the snapshot, whose write
        failing on any rank, a full disk, is returned for the eval's end to agree on)."""
        out, tc, problem = {}, self.task_cfg, None
        for name, ts in self.task_sets.items():
            score, n = score_task(model, ts, 0, tc.examples, tc.micro_batch or self.micro_batch, self.dist,
                                  tc.max_new_tokens)
            out[f"task/{name}/{ts.metric}"] = score
        if self.weight_delta is not None:
            module = getattr(model, "module", model)
            if step == 0 and self.weight_delta.base is None:
                problem = failure_of(self.weight_delta.snapshot, module)
                out["weights/mean_abs_delta"] = 0.0  # curves start at the base
            elif self.weight_delta.base is not None:
                out["weights/mean_abs_delta"] = self.weight_delta.measure(module)
        return out, problem

    def curves(self, state: RunState, name: str = "degradation.png") -> Path | None:
        """Rank 0: every eval's perplexity and ratio to step 0 against tokens seen, as curves/<name>. Every rank
        calls it (the end of a job): they agree on a full disk here, as after an eval."""
        png, problem = None, None
        if self.dist.main and state.history:
            try:
                png = degradation_curves(state.history, self.train_domains, self.run_dir / "curves" / name)
                self.tracker.log_artifact(png, "curves")
            except Exception as err:  # the other ranks wait for it below: they must hear of any failure
                problem = err
        stop_together(problem or self.tracker.write_problem, self.dist)
        return png
