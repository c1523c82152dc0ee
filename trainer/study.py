"""`odyssey study STUDY.yaml`: one continued-pretraining run per domain under a parent MLflow run, then the analysis
across domains: same-domain Δppl against similarity to the reference (Pearson, Spearman), token attribution, report.

    name: my-study
    out_dir: studies/my-study
    model: {path: /models/base}            # the model section of a run config
    reference: {name: web, path: data/domains/web_sample}
    domains: [{name: legal, path: data/domains/legal}, {name: code, path: data/domains/code}]
    train: {optim: {lr: 1e-4}, run: {max_steps: 200}, eval: {interval: 50}}   # any run-config sections
    nproc: 2
    similarity: {primary: unigram_jsd, chunks: 256}

Runs go sequentially on this machine; on SLURM, launch/slurm/submit_study.sh runs the setup, a job array (one domain
per task) and the aggregation as dependent jobs, through --setup, --config-for and --aggregate. A stopped study
restarts where it was: similarities are kept, finished domains are skipped, an interrupted domain resumes.
"""
from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field

from trainer.config import ConfigError, EvalDomainCfg, ModelCfg, Section, config_from_dict

class SimilarityCfg(Section):
    primary: Literal["unigram_jsd", "unigram_cosine", "emb_cosine", "emb_mmd", "emb_frechet"] = "unigram_jsd"
    chunks: int = Field(default=256, gt=1)
    chunk_tokens: int = Field(default=128, gt=1)
    seed: int = 0
    embedder: str | None = None


class StudyCfg(Section):
    name: str
    out_dir: str
    model: ModelCfg
    reference: EvalDomainCfg
    domains: list[EvalDomainCfg] = Field(min_length=2)
    train: dict[str, Any] = Field(default_factory=dict)
    nproc: int = Field(default=1, gt=0)
    eval_reference: bool = True  # also evaluate the reference in every run
    eval_others: bool = True  # also evaluate the other study domains in every run (cross-domain curves)
    similarity: SimilarityCfg = Field(default_factory=SimilarityCfg)


def load_study(path: str | Path) -> StudyCfg:
    from pydantic import ValidationError

    from trainer.config import _format_error

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"study file not found: {path}")
    try:
        return StudyCfg.model_validate(yaml.safe_load(path.read_text()) or {})
    except ValidationError as err:
        raise ConfigError(_format_error(err).replace("config key", "study key")) from None


def child_config(study: StudyCfg, domain: EvalDomainCfg, parent_id: str, tracking_uri: str) -> dict:
    """The run config for one domain: the study's train sections, that domain as the only stream, all evaluated."""
    tree = copy.deepcopy(study.train)
    for key in ("model", "tracking"):
        if key in tree:
            raise ConfigError(f"study key 'train.{key}': set the model at the top level; tracking is the study's")
    tree["model"] = study.model.model_dump(mode="json")
    data = tree.setdefault("data", {})
    data["streams"] = [{"name": domain.name, "path": domain.path}]
    others = [d for d in study.domains if d.name != domain.name] if study.eval_others else []
    evals = others + ([study.reference] if study.eval_reference else [])
    tree.setdefault("eval", {})["domains"] = [d.model_dump() for d in evals]
    tree.setdefault("run", {}).update({"out_dir": str(Path(study.out_dir).resolve() / "runs"), "name": domain.name})
    tree["tracking"] = {"uri": tracking_uri, "experiment": study.name, "run_name": domain.name,
                        "tags": {"mlflow.parentRunId": parent_id, "study": study.name, "domain": domain.name}}
    config_from_dict(tree)  # validate now, with the study's name for the key in the error
    return tree


def setup_study(path: str | Path):
    """Everything before the training runs: the parent MLflow run, the similarities, one run config per domain.
    Idempotent: a second call reuses the parent run and the similarities. Returns (study, out, tracker, similarity)."""
    from trainer.tracking import Tracker

    study = load_study(path)
    out = Path(study.out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    names = [d.name for d in study.domains]
    if len(set(names)) != len(names) or study.reference.name in names:
        raise ConfigError("study domains need distinct names, none equal to the reference's")
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
        similarity = compute_similarity(study, sim_path)
        tracker.log_metrics({f"similarity/{d}/{m}": v for d, ms in similarity["to_reference"].items()
                             for m, v in ms.items()}, step=0)
        for f in sim_path.parent.iterdir():
            tracker.log_artifact(f, "similarity")
    return study, out, tracker, json.loads(sim_path.read_text())


def config_path(out: Path, domain: str) -> Path:
    return out / "configs" / f"{domain}.yaml"


def finished(out: Path, domain: str) -> bool:
    from trainer.train import FINISHED

    return (out / "runs" / domain / FINISHED).is_file()


def run_study(path: str | Path) -> dict:
    """The whole study on this machine: setup, each unfinished domain in turn (resuming an interrupted one), then
    the aggregation. On SLURM, launch/slurm/submit_study.sh runs the same three parts as jobs instead."""
    study, out, tracker, similarity = setup_study(path)
    for dom in study.domains:
        run_dir = out / "runs" / dom.name
        if finished(out, dom.name):
            say(f"{dom.name}: finished earlier, skipped")
            continue
        resume = ["--resume", "auto"] if (run_dir / "checkpoints").is_dir() else []
        say(f"{dom.name}: training ({'resuming' if resume else 'fresh'}), {study.nproc} rank(s)")
        rc = subprocess.call([sys.executable, "-m", "trainer.cli", "train", str(config_path(out, dom.name)),
                              "--nproc", str(study.nproc), *resume])
        if rc:
            tracker.end("FAILED")
            raise StudyError(f"the run for domain '{dom.name}' failed (exit {rc}); fix it and run the study again "
                             f"to continue from there")
    return finish_study(study, out, tracker, similarity)


def finish_study(study: StudyCfg, out: Path, tracker, similarity: dict) -> dict:
    from mlflow import MlflowClient

    from trainer.study_report import aggregate

    summary = aggregate(study, out, similarity, MlflowClient(tracker.uri), tracker)
    tracker.end("FINISHED")
    say(f"report: {out / 'report' / 'index.html'}")
    return summary


def aggregate_study(path: str | Path) -> dict:
    """The aggregation alone (a SLURM job that depends on the array): every domain's run must have finished."""
    study, out, tracker, similarity = setup_study(path)
    missing = [d.name for d in study.domains if not finished(out, d.name)]
    if missing:
        raise StudyError(f"domains not finished: {', '.join(missing)} (no FINISHED in {out / 'runs'}/<domain>); "
                         f"run or resubmit their training first")
    return finish_study(study, out, tracker, similarity)


def domain_config(path: str | Path, which: str) -> Path:
    """The run config of one domain, by name or 0-based index (SLURM_ARRAY_TASK_ID); written by the setup."""
    study = load_study(path)
    names = [d.name for d in study.domains]
    name = names[int(which)] if which.isdigit() and int(which) < len(names) else which
    if name not in names:
        raise StudyError(f"no domain {which!r} in the study (domains: {', '.join(names)}; indexes 0-{len(names) - 1})")
    cfg = config_path(Path(study.out_dir).resolve(), name)
    if not cfg.is_file():
        raise StudyError(f"{cfg} not found: run `odyssey study {path} --setup` first")
    return cfg


class StudyError(RuntimeError):
    """A study that cannot continue: one line naming the domain."""


def compute_similarity(study: StudyCfg, sim_path: Path) -> dict:
    from data_prep.prepare import load_tokenizer
    from data_prep.similarity import MEASURES, Embedder, SampleCfg, compute, default_embedder_path, write
    from trainer.plots import similarity_heatmaps

    s = study.similarity
    say("similarity of each domain to the reference")
    result = compute(Path(study.reference.path), {d.name: Path(d.path) for d in study.domains},
                     load_tokenizer(study.model.tokenizer or study.model.path),
                     Embedder(s.embedder or default_embedder_path()),
                     SampleCfg(seed=s.seed, chunks=s.chunks, chunk_tokens=s.chunk_tokens))
    write(result, sim_path)
    similarity_heatmaps(result["pairwise"], sim_path.with_name("similarity_heatmap.png"), MEASURES)
    return result


def say(msg: str) -> None:
    print(f"[study] {msg}", flush=True)
