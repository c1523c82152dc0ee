"""`odyssey study TASKS.yaml` with `kind: tasks`: fine-tune one model per task and FTICL setting, then score the
generalization matrix, all under one parent MLflow run (the task study file: study/task_config.py).

The same three parts as a pretraining study, so launch/slurm/submit_study.sh runs it unchanged: the setup (tasks
prepared once, and again only when a task's spec or the tokenizer changes; the parent run; one `odyssey finetune`
config per run), the runs (sequential here, a SLURM array there; finished runs skipped, an interrupted one resumed),
and the aggregation: `odyssey evaluate-tasks` over the base model and every run × every task's test set and
out-of-domain sets × the study's shots (a child run `matrix`), then its results, the curves of every run and the
report into the parent run.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from data_prep.disk import write_atomic
from data_prep.console import log
from data_prep.manifest import read_manifest, tokenizer_fingerprint
from data_prep.task_examples import ENCODING
from data_prep.task_sources import source_stamp
from data_prep.tasks import TaskCfg, prepare_task
from study.prep import fingerprint_key
from study.runs import StudyError, config_path, finished, run_config_for, send_journals, train_each
from study.task_config import TaskStudyCfg
from trainer.config import config_from_dict
from trainer.model import load_tokenizer
from trainer.tracking import Tracker


def prepared(study: TaskStudyCfg) -> dict[str, Path]:
    """{run key or ood name: prepared folder}; a folder whose manifest has another spec, tokenizer, source files
    (names, sizes, times) or encoding rule is prepared again."""
    fingerprint = fingerprint_key(tokenizer_fingerprint(load_tokenizer(study.model)))
    todo = [(key, task) for key, task, _ in study.variants()] + [(o.name, study.ood_cfg(o)) for o in study.ood]
    paths = {}
    for key, task in todo:
        folder = study.prep_out / key
        current = _manifest(folder)
        if not (current and current.get("task") == task.model_dump(mode="json") and current.get("encoding") == ENCODING
                and fingerprint_key(current["tokenizer"]) == fingerprint
                and current.get("source_stamp") == json.loads(json.dumps(source_stamp(task.source)))):
            log(f"preparing task {key} ({task.source})", tag="study")
            prepare_task(task, study.prep_out, study.model.tokenizer or study.model.path, overwrite=True)
        paths[key] = folder
    return paths


def _manifest(folder: Path) -> dict | None:
    try:
        return read_manifest(folder)
    except Exception:  # missing or unreadable: prepare it
        return None


def run_config(study: TaskStudyCfg, key: str, task: TaskCfg, k: int, path: Path, parent_id: str, uri: str) -> dict:
    """One fine-tuning run: the study's train sections, the (FTICL-)prepared task as the only stream, named after the
    task so every variant's curves share their keys."""
    tree = study.train.model_dump(mode="json", exclude_unset=True)
    tree["model"] = study.model.model_dump(mode="json")
    base = key.rsplit("-fticl", 1)[0] if k else key
    tree.setdefault("data", {})["streams"] = [{"name": base, "path": str(path)}]
    tree.setdefault("run", {}).update({"out_dir": str(study.out / "runs"), "name": key})
    tree["tracking"] = {"uri": uri, "experiment": study.name, "run_name": key,
                        "tags": {"mlflow.parentRunId": parent_id, "study": study.name, "task": base, "fticl": str(k)}}
    config_from_dict(tree)  # fails here, before any compute
    return tree


def setup(path: str | Path, study: TaskStudyCfg) -> tuple[Tracker, dict[str, Path]]:
    out = study.out
    out.mkdir(parents=True, exist_ok=True)
    paths = prepared(study)
    state_path = out / "study_state.json"
    state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    tracker = Tracker(out, study.name, enabled=True)
    state["parent_run_id"] = tracker.start(study.name, state.get("parent_run_id"),
                                           tags={"study": study.name, "kind": "tasks"}, wait=True)
    write_atomic(state_path, json.dumps(state, indent=2))
    log(f"task study {study.name}: {len(study.run_keys)} runs; parent MLflow run {tracker.run_id} at {tracker.uri}",
        tag="study")
    for key, task, k in study.variants():
        cfg = config_path(out, key)
        cfg.parent.mkdir(parents=True, exist_ok=True)
        cfg.write_text(yaml.safe_dump(run_config(study, key, task, k, paths[key], tracker.run_id, tracker.uri),
                                      sort_keys=False))
    return tracker, paths


def matrix_file(study: TaskStudyCfg, paths: dict[str, Path], tracker: Tracker) -> Path:
    """The evaluate-tasks YAML: the base and every run × each task's test set and its out-of-domain sets."""
    models = [{"name": "base", "path": study.model.path, "tokenizer": study.model.tokenizer}]
    for key, task, k in study.variants():
        models.append({"name": key, "path": str(study.out / "runs" / key), "task": key.rsplit("-fticl", 1)[0],
                       "fticl": k > 0})
    tests = [{"name": t.name, "path": str(paths[t.name])} for t in study.tasks]
    tests += [{"name": o.name, "path": str(paths[o.name]), "task": o.of, "ood": True,
               "demos_from": str(paths[o.of])} for o in study.ood]
    tree = {"out": str(study.out / "matrix"), "models": models, "tests": tests, "dtype": study.model.dtype,
            **study.matrix.model_dump(mode="json"),
            "tracking": {"uri": tracker.uri, "experiment": study.name, "run_name": "matrix",
                         "tags": {"mlflow.parentRunId": tracker.run_id, "study": study.name}}}
    path = study.out / "configs" / "matrix.yaml"
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


def aggregate(study: TaskStudyCfg, tracker: Tracker, paths: dict[str, Path]) -> dict:
    """The matrix (a child run), then its results, the runs' curves and the report into the parent run."""
    from study.task_report import write_report
    from launch.hostfile import master_port
    from trainer.cli import deepspeed_launch
    from trainer.task_matrix import export_runs, load_matrix, log_matrix

    missing = [key for key in study.run_keys if not finished(study.out, key)]
    if missing:
        raise StudyError(f"runs not finished: {', '.join(missing)}; run or resubmit their training first")
    send_journals(study.out, study.run_keys)
    matrix = matrix_file(study, paths, tracker)
    export_runs(load_matrix(str(matrix)))
    log(f"scoring the matrix: {matrix}", tag="study")
    rc = deepspeed_launch("trainer.task_matrix", [str(matrix)], study.nproc, master_port(study.name)) \
        if study.nproc > 1 else subprocess.call([sys.executable, "-m", "trainer.task_matrix", str(matrix)])
    if rc:
        tracker.end("FAILED")
        raise StudyError(f"the matrix evaluation failed (exit {rc}); run the study again to score what is missing")
    result = json.loads((study.out / "matrix" / "matrix.json").read_text())
    files = [study.out / "matrix" / n for n in ("matrix.json", "matrix.csv", "heatmap.png")]
    log_matrix(tracker, result["cells"], result, files)
    report = write_report(study, result, tracker)
    tracker.end("FINISHED")
    log(f"report: {report}", tag="study")
    return result


def run(path: str | Path, study: TaskStudyCfg, part: str | None = None, which: str | None = None):
    """The whole study (part None), or one part for SLURM: setup, config-for, aggregate."""
    if part == "config-for":
        return run_config_for(study.out, study.run_keys, which, path)
    tracker, paths = setup(path, study)
    if part == "setup":
        tracker.drain()  # the parent run stays open for the runs and the aggregation; what setup logged is sent
        return None
    if part is None:
        train_each(study.out, study.run_keys, study.nproc, tracker)
    return aggregate(study, tracker, paths)
