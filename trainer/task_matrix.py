"""`odyssey evaluate-tasks MATRIX.yaml [--nproc N]`: models × task test sets × k-shot, the generalization matrix.

Models are HF folders (base models, exported runs) or Odyssey runs (a run, checkpoints or step folder: exported once
to `<out>/models/<name>` with DeepSpeed's zero_to_fp32). Test sets are prepared task folders (odyssey prep --task);
their examples are encoded again from text with each model's own tokenizer, so one test set serves every model.
Each cell is scored by trainer/task_eval.py (accuracy from label-word log-likelihoods, or greedy Rouge-L), batched and
data-parallel over the ranks a launcher starts; with `zero3: true` every rank holds 1/world of the weights (ZeRO-3
inference) for models that do not fit one device. Scored cells are appended to `<out>/cells.jsonl`, so a rerun
scores only what is missing. Rank 0 writes matrix.json, matrix.csv and heatmap.png and logs them to MLflow with the
metrics `tasks/<model>/<test>/<k>shot/<metric>` and the generalization summary (analysis/task_scores.py).
"""
from __future__ import annotations

import csv
import gc
import hashlib
import io
import json
import time
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field, model_validator

from analysis.plots import task_heatmap
from analysis.task_scores import cell_kind, generalization
from data_prep.config import Section, read_yaml, validate
from data_prep.console import log
from data_prep.disk import DiskFull, append, write_atomic
from data_prep.guard import exit_process, guarded
from data_prep.task_examples import placeholders
from data_prep.tasks import template_list
from trainer.args import matrix_arguments, rank_args
from trainer.config import ConfigError, ModelCfg, TrackingCfg
from trainer.dist import Dist, failure_of, init_distributed, stop_together
from trainer.journal import read_records
from trainer.engine import inference_model
from trainer.model import load_tokenizer, resolve_dtype
from trainer.task_eval import open_task_rows, score_task, task_set
from trainer.tracking import Tracker

CELLS = "cells.jsonl"
# the scoring rule's version, part of every cell's key: 2 = targets and label words tokenized in context, generations
# stopped and cut on what the model generated (cells scored by an older rule are scored again)
SCORING = 2


class MatrixModel(Section):
    name: str
    path: str  # an HF folder, or an Odyssey run / checkpoints / step folder (exported to <out>/models/<name>)
    task: str | None = None  # the task it was fine-tuned on; None: a base model
    fticl: bool = False  # fine-tuned with in-context demonstrations in its training prompts
    tokenizer: str | None = None  # default: the model folder's


class MatrixTest(Section):
    name: str
    path: str  # a prepared task folder (odyssey prep --task)
    task: str | None = None  # the task it tests; default: its manifest's task name
    ood: bool = False  # an out-of-domain test set of that task
    split: Literal["test", "val"] = "test"
    # the fallback pool: a prepared task whose training split gives the k-shot demonstrations when the test set's
    # own training split (its few-shot pool, the reference study's choice) has fewer than the largest k
    demos_from: str | None = None
    template: int = Field(default=0, ge=0)  # which of the task's templates prompts (Prompt-1: 0, Prompt-2: 1)


class MatrixCfg(Section):
    out: str
    models: list[MatrixModel] = Field(min_length=1)
    tests: list[MatrixTest] = Field(min_length=1)
    shots: list[int] = Field(default_factory=lambda: [0], min_length=1)
    max_examples: int | None = Field(default=100, gt=0)  # per test set, from its start
    max_new_tokens: int = Field(default=60, gt=0)
    micro_batch: int = Field(default=8, gt=0)
    dtype: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    zero3: bool = False  # ZeRO-3 inference: weights partitioned over the ranks
    tracking: TrackingCfg = Field(default_factory=lambda: TrackingCfg(experiment="odyssey-tasks"))

    @model_validator(mode="after")
    def _check(self) -> "MatrixCfg":
        for what, names in (("models", [m.name for m in self.models]), ("tests", [t.name for t in self.tests])):
            if len(set(names)) != len(names):
                raise ValueError(f"{what}: duplicate names {sorted({n for n in names if names.count(n) > 1})}")
        if any(k < 0 for k in self.shots):
            raise ValueError("shots must be >= 0")
        bases = [m.name for m in self.models if m.task is None]
        if len(bases) > 1:
            raise ValueError(f"one base model (a model without task) per matrix; gains are measured against it "
                             f"(got {bases})")
        return self


def check_matrix(cfg: MatrixCfg) -> None:
    """Before any model loads: every test set is a prepared task with enough demonstrations for the largest k, and
    every model path is an HF folder or an Odyssey run with a complete checkpoint. One line for the first problem."""
    from data_prep.manifest import read_manifest
    from trainer.export import locate

    for t in cfg.tests:
        manifest = read_manifest(t.path)
        if manifest.get("kind") != "task":
            raise ConfigError(f"test set '{t.name}': {t.path} is not a prepared task (odyssey prep --task)")
        if not manifest["splits"][t.split]["samples"]:
            raise ConfigError(f"test set '{t.name}': its {t.split} split is empty")
        if manifest["task"]["kind"] == "generation" and cfg.max_new_tokens >= manifest["task"]["max_len"] // 2:
            raise ConfigError(f"test set '{t.name}': max_new_tokens {cfg.max_new_tokens} leaves too little of "
                              f"max_len {manifest['task']['max_len']} for the prompt")
        pool_path = demo_pool(t, max(cfg.shots))
        pool = read_manifest(pool_path)
        if max(cfg.shots) > pool["splits"]["train"]["samples"]:
            raise ConfigError(f"test set '{t.name}': {max(cfg.shots)}-shot needs {max(cfg.shots)} demonstrations; "
                              f"the training split of {pool_path} has {pool['splits']['train']['samples']} "
                              f"(set demos_from)")
        wanted, given = (sorted(placeholders(template_list(m["task"]["template"])[0])) for m in (manifest, pool))
        if wanted != given:
            raise ConfigError(f"test set '{t.name}': demos_from {t.demos_from} has the fields {given}, the test "
                              f"set {wanted}")
    for m in cfg.models:
        if not (Path(m.path) / "config.json").is_file():
            if not Path(m.path).exists():
                raise ConfigError(f"model '{m.name}': {m.path} not found")
            locate(Path(m.path), fast=True)


def export_runs(cfg: MatrixCfg) -> None:
    """Export every run's newest checkpoint before any rank starts (a rank waiting at a barrier while a 70B model
    consolidates would hit the process group's timeout)."""
    for m in cfg.models:
        model_folder(m, Path(cfg.out), Dist())


def model_folder(m: MatrixModel, out: Path, dist: Dist) -> Path:
    """An HF folder for the model: its own path, or (rank 0) the newest complete checkpoint of a run, exported
    (already done by `export_runs` when the CLI or a study launched the ranks)."""
    from trainer.export import export, locate

    path = Path(m.path)
    if (path / "config.json").is_file():
        return path
    root, tag, _ = locate(path, fast=True)  # a one-line error when it is neither
    dst = out / "models" / m.name.replace("/", "__")
    marker = dst / "odyssey_export.yaml"
    if dist.main and not (marker.is_file() and str(root / tag) in marker.read_text()):
        log(f"exporting {root / tag} → {dst}")
        export(root / tag, dst, overwrite=True)
    if dist.world > 1:
        torch.distributed.barrier()
    return dst


def demo_pool(t: MatrixTest, shots: int) -> str:
    """The prepared task whose training split gives `t`'s k-shot demonstrations: the test set's own folder (the
    reference study draws each test set's demonstrations from its own few-shot pool) when it holds `shots`
    examples, else the `demos_from` fallback."""
    from data_prep.manifest import read_manifest

    if t.demos_from and read_manifest(t.path)["splits"]["train"]["samples"] < shots:
        return t.demos_from
    return t.path


def cell_key(cfg: MatrixCfg, m: MatrixModel, t: MatrixTest, shots: int) -> str:
    """What a score depends on: a cell scored with other settings, by another scoring rule, or on a test set (or
    demonstration pool) prepared again with other content, is scored again."""
    pool = demo_pool(t, max(cfg.shots))
    return json.dumps([SCORING, m.name, m.path, m.tokenizer, t.name, t.path, t.split, t.template, pool, shots,
                       cfg.max_examples, cfg.max_new_tokens, cfg.dtype, _content(t.path), _content(pool)])


def _content(path: str | None) -> str | None:
    """A prepared task's content as its manifest states it (the example counts and spec, not the timing)."""
    from data_prep.manifest import read_manifest

    if path is None:
        return None
    m = read_manifest(path)
    return hashlib.sha1(json.dumps([m["task"], m["splits"], m["tokenizer"]], sort_keys=True).encode()).hexdigest()


def done_cells(out: Path) -> list[dict]:
    """The cells scored before; a line cut short by a crash is skipped (that cell is scored again)."""
    return read_records(out / CELLS)


def score_model(cfg: MatrixCfg, m: MatrixModel, todo: list[tuple[MatrixTest, int]], opened: dict,
                dist: Dist) -> list[dict]:
    """Every (test set, shots) cell of one model; rank 0 appends each to cells.jsonl as it is scored."""
    out = Path(cfg.out)
    folder = model_folder(m, out, dist)
    model, keep = inference_model(ModelCfg(path=str(folder), dtype=cfg.dtype), cfg.zero3, dist.device)
    tokenizer = load_tokenizer(ModelCfg(path=str(folder), tokenizer=m.tokenizer))
    cells = []
    for test, shots in todo:
        ts = task_set(test.name, *opened[test.name][:2], tokenizer, opened[test.name][2], test.template)
        t0 = time.time()
        score, n = score_task(model, ts, shots, cfg.max_examples, cfg.micro_batch, dist, cfg.max_new_tokens)
        cell = {"key": cell_key(cfg, m, test, shots), "model": m.name, "model_task": m.task, "model_kind": None, "fticl": m.fticl, "test": test.name,
                "test_task": test.task or ts.task, "test_kind": ts.kind, "ood": test.ood, "shots": shots,
                "metric": ts.metric, "score": score, "examples": n, "seconds": round(time.time() - t0, 1)}
        cells.append(cell)
        # whole lines only (a full disk cuts the line back); every rank stops with the line before the next cell
        stop_together(failure_of(append, out / CELLS, (json.dumps(cell) + "\n").encode()) if dist.main else None,
                      dist)
        log(f"{m.name} × {test.name} {shots}-shot: {ts.metric} {score:.4f} ({n} examples, "
            f"{cell['seconds']}s)")
    del model, keep
    gc.collect()
    return cells


def evaluate_matrix(cfg: MatrixCfg) -> list[dict]:
    check_matrix(cfg)
    dist = init_distributed()
    cfg.dtype = resolve_dtype(cfg.dtype)
    out = Path(cfg.out)
    if dist.main:
        out.mkdir(parents=True, exist_ok=True)
    if dist.world > 1:
        torch.distributed.barrier()
    wanted = {cell_key(cfg, m, t, k) for m in cfg.models for t in cfg.tests for k in cfg.shots}
    cells = list({c["key"]: c for c in done_cells(out) if c.get("key") in wanted}.values())
    opened = {t.name: open_task_rows(t.path, t.split, demo_pool(t, max(cfg.shots))) for t in cfg.tests}
    have = {c["key"] for c in cells}
    for m in cfg.models:
        todo = [(t, k) for t in cfg.tests for k in cfg.shots if cell_key(cfg, m, t, k) not in have]
        if todo:
            cells += score_model(cfg, m, todo, opened, dist)
    kind_of = {c["test_task"]: c["test_kind"] for c in cells if not c["ood"]}
    for c in cells:
        c["model_kind"] = kind_of.get(c["model_task"])
    stop_together(failure_of(write_matrix, cfg, cells) if dist.main else None, dist)
    return cells


def write_matrix(cfg: MatrixCfg, cells: list[dict]) -> None:
    """matrix.json (cells + generalization summary), matrix.csv, heatmap.png (each whole or not at all), and the
    MLflow run. A full disk here or in its tracking raises DiskFull."""
    out = Path(cfg.out)
    summary = generalization(cells)
    write_atomic(out / "matrix.json", json.dumps({"cells": cells, **summary}, indent=2) + "\n")
    columns = ["model", "model_task", "fticl", "test", "test_task", "ood", "shots", "metric", "score", "examples"]
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, columns + ["kind"], extrasaction="ignore")
    writer.writeheader()
    for c in cells:
        writer.writerow({**c, "kind": cell_kind(c["model_task"], c["test_task"], c["ood"])})
    write_atomic(out / "matrix.csv", table.getvalue())
    png = task_heatmap(cells, summary["models"], out / "heatmap.png")
    tracker = Tracker(out, cfg.tracking.experiment, enabled=True, uri=cfg.tracking.uri, journal="matrix")
    tracker.start(cfg.tracking.run_name or out.name, tags={**cfg.tracking.tags, "kind": "task-matrix"})
    log_matrix(tracker, cells, summary, [out / "matrix.json", out / "matrix.csv", png])
    tracker.end("FINISHED")
    if tracker.write_problem:
        raise DiskFull(tracker.write_problem)
    for f in summary["findings"]:
        log(f"{f['finding']}: {f['text']}")
    log(f"matrix of {len(cells)} cells: {out / 'matrix.csv'}, {png}; MLflow run {tracker.run_id} at {tracker.uri}")


def log_matrix(tracker: Tracker, cells: list[dict], summary: dict, files: list[Path]) -> None:
    """The matrix into an MLflow run: a metric per cell, the gains by cell kind, the findings as tags, the files."""
    metrics = {f"tasks/{c['model']}/{c['test']}/{c['shots']}shot/{c['metric']}": c["score"] for c in cells}
    for g in summary["models"]:
        for kind in ("in-domain", "out-of-domain", "cross-task"):
            if kind in g:
                metrics[f"tasks/{g['model']}/{g['shots']}shot/gain_{kind.replace('-', '_')}"] = g[kind]
    tracker.log_metrics(metrics, 0)
    for f in summary["findings"]:
        tracker.set_tag(f"finding/{f['finding']}", f["text"])
    for path in files:
        tracker.log_artifact(path, "tasks")


def load_matrix(path: str) -> MatrixCfg:
    return validate(MatrixCfg, read_yaml(path), "evaluate-tasks")


def main(argv: list[str] | None = None) -> int:
    """`python -m trainer.task_matrix`, what the deepspeed launcher starts on every rank: `odyssey evaluate-tasks`'s
    arguments, one rank."""
    args = rank_args("odyssey evaluate-tasks", matrix_arguments, argv)

    def run() -> int:
        evaluate_matrix(load_matrix(args.matrix))
        return 0

    return guarded(run)


if __name__ == "__main__":
    exit_process(main())
