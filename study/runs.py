"""`odyssey study STUDY.yaml`: one continued-pretraining run per domain under a parent MLflow run, then the analysis
across domains: same-domain Δppl against similarity to the reference (Pearson, Spearman), token attribution, report.
The study file: study/config.py.

Runs go sequentially on this machine; on SLURM, launch/slurm/submit_study.sh runs the setup, a job array (one domain
per task) and the aggregation as dependent jobs, through --setup, --config-for and --aggregate. A stopped study
restarts where it was: similarities are kept, finished domains are skipped, an interrupted domain resumes.
"""
from __future__ import annotations

import json
from pathlib import Path

import yaml

from data_prep.errors import OdysseyError
from data_prep.similarity import SampleCfg
from study.config import StudyCfg, load_study
from study.similarity import log_similarity, measure
from trainer.config import EvalDomainCfg, config_from_dict
from trainer.state import FINISHED
from trainer.tracking import Tracker


class StudyError(OdysseyError, RuntimeError):
    """A study that cannot continue: one line naming the domain."""


def child_config(study: StudyCfg, domain: EvalDomainCfg, parent_id: str, tracking_uri: str) -> dict:
    """The run config for one domain: the study's train sections, that domain as the only stream, all evaluated."""
    tree = study.train.model_dump(mode="json", exclude_unset=True)
    tree["model"] = study.model.model_dump(mode="json")
    tree.setdefault("data", {})["streams"] = [{"name": domain.name, "path": domain.path}]
    others = [d for d in study.domains if d.name != domain.name] if study.eval_others else []
    evals = others + ([study.reference] if study.eval_reference else [])
    tree.setdefault("eval", {})["domains"] = [d.model_dump() for d in evals]
    tree.setdefault("run", {}).update({"out_dir": str(study.out / "runs"), "name": domain.name})
    tree["tracking"] = {"uri": tracking_uri, "experiment": study.name, "run_name": domain.name,
                        "tags": {"mlflow.parentRunId": parent_id, "study": study.name, "domain": domain.name}}
    config_from_dict(tree)  # a run config that would not load fails here, before any compute
    return tree


def setup_study(path: str | Path) -> tuple[StudyCfg, Tracker, dict]:
    """Everything before the training runs: the parent MLflow run, one run config per domain, the similarities.
    Idempotent: a second call reuses the parent run and the similarities. Returns (study, tracker, similarity)."""
    study = load_study(path)
    out = study.out
    out.mkdir(parents=True, exist_ok=True)
    state_path = out / "study_state.json"
    state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    tracker = Tracker(out, study.name, enabled=True)
    state["parent_run_id"] = tracker.start(study.name, state.get("parent_run_id"), tags={"study": study.name})
    state_path.write_text(json.dumps(state, indent=2))
    say(f"study {study.name}: parent MLflow run {tracker.run_id} at {tracker.uri}")
    for dom in study.domains:  # validated before any compute, so a bad domain costs nothing
        cfg_path = config_path(out, dom.name)
        cfg_path.parent.mkdir(exist_ok=True)
        cfg_path.write_text(yaml.safe_dump(child_config(study, dom, tracker.run_id, tracker.uri), sort_keys=False))
    sim_path = out / "similarity" / "similarity.json"
    if not sim_path.is_file():
        say("similarity of each domain to the reference")
        s = study.similarity
        result, png = measure(Path(study.reference.path), {d.name: Path(d.path) for d in study.domains},
                              study.model.tokenizer or study.model.path, s.embedder,
                              SampleCfg(seed=s.seed, chunks=s.chunks, chunk_tokens=s.chunk_tokens), sim_path)
        log_similarity(tracker, result, [sim_path, png])
    return study, tracker, json.loads(sim_path.read_text())


def config_path(out: Path, domain: str) -> Path:
    return out / "configs" / f"{domain}.yaml"


def finished(out: Path, domain: str) -> bool:
    return (out / "runs" / domain / FINISHED).is_file()


def run_study(path: str | Path) -> dict:
    """The whole study on this machine: setup, each unfinished domain in turn (resuming an interrupted one), then
    the aggregation. On SLURM, launch/slurm/submit_study.sh runs the same three parts as jobs instead."""
    from trainer.cli import launch_local

    study, tracker, similarity = setup_study(path)
    for dom in study.domains:
        if finished(study.out, dom.name):
            say(f"{dom.name}: finished earlier, skipped")
            continue
        resume = "auto" if (study.out / "runs" / dom.name / "checkpoints").is_dir() else None
        say(f"{dom.name}: training ({'resuming' if resume else 'fresh'}), {study.nproc} rank(s)")
        try:
            rc = launch_local(str(config_path(study.out, dom.name)), [], study.nproc, resume)
        except OdysseyError:  # the checks before any rank starts: one line that names the problem
            tracker.end("FAILED")
            raise
        if rc:
            tracker.end("FAILED")
            raise StudyError(f"the run for domain '{dom.name}' failed (exit {rc}); fix it and run the study again "
                             f"to continue from there")
    return finish_study(study, tracker, similarity)


def finish_study(study: StudyCfg, tracker: Tracker, similarity: dict) -> dict:
    from mlflow import MlflowClient

    from study.report import aggregate

    summary = aggregate(study, similarity, MlflowClient(tracker.uri), tracker)
    tracker.end("FINISHED")
    say(f"report: {study.out / 'report' / 'index.html'}")
    return summary


def aggregate_study(path: str | Path) -> dict:
    """The aggregation alone (a SLURM job that depends on the array): every domain's run must have finished."""
    study, tracker, similarity = setup_study(path)
    missing = [d.name for d in study.domains if not finished(study.out, d.name)]
    if missing:
        raise StudyError(f"domains not finished: {', '.join(missing)} (no FINISHED in {study.out / 'runs'}/<domain>); "
                         f"run or resubmit their training first")
    return finish_study(study, tracker, similarity)


def domain_config(path: str | Path, which: str) -> Path:
    """The run config of one domain, by name or 0-based index (SLURM_ARRAY_TASK_ID); written by the setup."""
    study = load_study(path)
    names = [d.name for d in study.domains]
    name = names[int(which)] if which.isdigit() and int(which) < len(names) else which
    if name not in names:
        raise StudyError(f"no domain {which!r} in the study (domains: {', '.join(names)}; indexes 0-{len(names) - 1})")
    cfg = config_path(study.out, name)
    if not cfg.is_file():
        raise StudyError(f"{cfg} not found: run `odyssey study {path} --setup` first")
    return cfg


def say(msg: str) -> None:
    print(f"[study] {msg}", flush=True)
