"""`odyssey study STUDY.yaml`: one continued-pretraining run per model and domain under a parent MLflow run, then the
analysis: same-domain Δppl against similarity to each model's reference (Pearson, Spearman), token attribution, per
model and pooled, and the report. The study file: study/config.py; data per model's tokenizer: study/prep.py.

Runs go sequentially on this machine; on SLURM, launch/slurm/submit_study.sh runs the setup, a job array (one run per
task) and the aggregation as dependent jobs, through --setup, --config-for and --aggregate. A stopped study restarts
where it was: preparations and similarities are kept, finished runs are skipped, an interrupted run resumes.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml

from data_prep.disk import write_atomic
from data_prep.console import log
from data_prep.errors import OdysseyError
from data_prep.manifest import tokenizer_fingerprint
from data_prep.similarity import SampleCfg
from study.config import StudyCfg, StudyModel, load_study
from study.prep import check_sources, fingerprint_key, model_paths, model_tokenizer
from study.similarity import log_similarity, measure
from trainer.config import config_from_dict
from trainer.data import check_stratified
from trainer.state import FINISHED
from trainer.tracking import Tracker


class StudyError(OdysseyError, RuntimeError):
    """A study that cannot continue: one line naming the run."""


def child_config(study: StudyCfg, model: StudyModel, domain: str, paths: dict[str, Path], parent_id: str,
                 tracking_uri: str, variant: str | None = None) -> dict:
    """The run config of one model on one domain (in one variant): the study's train sections with the variant's
    over them, that domain as the stream (with the model's reference beside it at the variant's replay share), the
    other domains and the reference evaluated, every path the model's own preparation."""
    tree = study.train_tree(variant)
    tree["model"] = model.model_dump(mode="json", exclude={"name", "reference"})
    streams = [{"name": domain, "path": str(paths[domain])}]
    replay, reference = study.variant(variant).replay, model.reference.name
    if replay:  # the replay share in every step (stratified mixing), unless the variant says how to mix
        streams = [{**streams[0], "proportion": 1 - replay},
                   {"name": reference, "path": str(paths[reference]), "proportion": replay}]
        tree.setdefault("data", {}).setdefault("mixing", "stratified")
    tree.setdefault("data", {})["streams"] = streams
    others = [d.name for d in study.domains if d.name != domain] if study.eval_others else []
    evals = others + ([reference] if study.eval_reference else [])
    tree.setdefault("eval", {})["domains"] = [{"name": n, "path": str(paths[n])} for n in evals]
    key = study.run_key(model.name, domain, variant)
    run_dir = study.out / "runs" / key
    tree.setdefault("run", {}).update({"out_dir": str(run_dir.parent), "name": run_dir.name})
    tags = {"mlflow.parentRunId": parent_id, "study": study.name, "domain": domain, "model": model.name}
    tree["tracking"] = {"uri": tracking_uri, "experiment": study.name, "run_name": key,
                        "tags": {**tags, **({"variant": variant} if variant else {})}}
    cfg = config_from_dict(tree)  # a run config that would not load fails here, before any compute
    if replay and cfg.data.mixing == "stratified":
        check_stratified(cfg, study.nproc)
    return tree


def setup_study(path: str | Path) -> tuple[StudyCfg, Tracker, dict[str, dict]]:
    """Everything before the training runs: the parent MLflow run, each model's prepared domains, one run config per
    model and domain, the similarities. Idempotent: a second call reuses the parent run, the preparations and the
    similarities. Returns (study, tracker, {model name: similarity result})."""
    study = load_study(path)
    check_sources(study)
    out = study.out
    out.mkdir(parents=True, exist_ok=True)
    tokenizers = {m.name: model_tokenizer(m) for m in study.model_list}  # a bad source fails before any MLflow run
    paths = {m.name: model_paths(study, m, tokenizers[m.name]) for m in study.model_list}
    state_path = out / "study_state.json"
    state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    tracker = Tracker(out, study.name, enabled=True)
    state["parent_run_id"] = tracker.start(study.name, state.get("parent_run_id"), tags={"study": study.name},
                                           wait=True)
    write_atomic(state_path, json.dumps(state, indent=2))
    log(f"study {study.name}: parent MLflow run {tracker.run_id} at {tracker.uri}", tag="study")
    similarity, measured = {}, {}
    shutil.rmtree(out / "scoring", ignore_errors=True)  # written again below: none left from an earlier study file
    for model in study.model_list:
        trees = []
        for dom in study.domains:  # each run config is validated here, before any training
            for variant in study.variant_names:
                trees.append(child_config(study, model, dom.name, paths[model.name], tracker.run_id, tracker.uri,
                                          variant))
                write_atomic(config_path(out, study.run_key(model.name, dom.name, variant)),
                             yaml.safe_dump(trees[-1], sort_keys=False))
        scoring = scoring_config(trees)
        if scoring:
            write_atomic(scoring_path(out, model.name), yaml.safe_dump(scoring, sort_keys=False))
        similarity[model.name] = model_similarity(study, model, paths[model.name], tokenizers[model.name], tracker,
                                                  measured)
    return study, tracker, similarity


def scoring_config(trees: list[dict]) -> dict | None:
    """The `odyssey score` config of one model's runs with loss.select_top (None: it has none): their streams
    together (each domain, and the reference where replayed), so the study scores them in one pass, one model load,
    rather than one per run."""
    selective = [t for t in trees if t.get("loss", {}).get("select_top") is not None]
    if not selective:
        return None
    streams = {s["name"]: {"name": s["name"], "path": s["path"]} for t in selective for s in t["data"]["streams"]}
    data = {k: v for k, v in selective[0]["data"].items() if k != "mixing"}
    tree = {**selective[0], "data": {**data, "streams": list(streams.values())}}
    config_from_dict(tree)
    return tree


def model_similarity(study: StudyCfg, model: StudyModel, paths: dict[str, Path], tokenizer, tracker,
                     measured: dict) -> dict:
    """Similarity of each domain to the model's reference, as that model tokenizes them; measured once per
    (tokenizer, reference) and kept in similarity[/<model>]/similarity.json."""
    sim_path = study.out / "similarity" / study.run_key(model.name, "") / "similarity.json"
    key = (fingerprint_key(tokenizer_fingerprint(tokenizer)), str(paths[model.reference.name]))
    if not sim_path.is_file():
        if key in measured:
            shutil.copytree(measured[key], sim_path.parent, dirs_exist_ok=True)
        else:
            log(f"similarity of each domain to {model.reference.name}, the reference of {model.name}",
                tag="study")
            s = study.similarity
            measure(paths[model.reference.name], {d.name: paths[d.name] for d in study.domains},
                    model.tokenizer or model.path, s.embedder,
                    SampleCfg(seed=s.seed, chunks=s.chunks, chunk_tokens=s.chunk_tokens), sim_path)
        log_similarity(tracker, json.loads(sim_path.read_text()), sorted(sim_path.parent.glob("similarity*")),
                       prefix=study.run_key(model.name, ""))
    measured.setdefault(key, sim_path.parent)
    return json.loads(sim_path.read_text())


def config_path(out: Path, key: str) -> Path:
    return out / "configs" / f"{key}.yaml"


def scoring_path(out: Path, model: str) -> Path:
    return out / "scoring" / f"{model}.yaml"


def finished(out: Path, key: str) -> bool:
    return (out / "runs" / key / FINISHED).is_file()


def send_journals(out: Path, keys: list[str]) -> None:
    """Before the aggregation reads the runs from MLflow: what a run could not send (its server was down when it
    ended) is sent now, or the study stops with one line rather than aggregate from missing metrics."""
    from trainer.tracking import sync

    for key in keys:
        run_dir = out / "runs" / key
        if not (run_dir / "mlflow").is_dir():
            continue
        uri, sent, left = sync(run_dir)
        if sent:
            log(f"{key}: sent {sent} MLflow call(s) its training could not send", tag="study")
        if left:
            raise StudyError(f"{key}: {left} MLflow call(s) still unsent ({uri} unreachable); the aggregation needs "
                             f"them: run `odyssey sync {run_dir}` once the server is back, then aggregate again")


def run_study(path: str | Path) -> dict:
    """The whole study on this machine: setup, each unfinished run in turn (resuming an interrupted one), then
    the aggregation. On SLURM, launch/slurm/submit_study.sh runs the same three parts as jobs instead."""
    study, tracker, similarity = setup_study(path)
    train_each(study.out, study.run_keys, study.nproc, tracker)
    return finish_study(study, tracker, similarity)


def train_each(out: Path, keys: list[str], nproc: int, tracker: Tracker) -> None:
    """Each unfinished run in turn on this machine (an interrupted one resumes), after one scoring pass per model
    for the runs with loss.select_top; a failure ends the parent run."""
    from trainer.cli import launch_local, launch_scoring

    todo = [key for key in keys if not finished(out, key)]
    for key in keys:
        if key not in todo:
            log(f"{key}: finished earlier, skipped", tag="study")
    scoring = sorted((out / "scoring").glob("*.yaml")) if todo else []
    for path in scoring:  # streams already scored (a restarted study) are skipped before any process starts
        log(f"base-model losses for loss.select_top ({path.stem}), {nproc} rank(s)", tag="study")
        launched(lambda: launch_scoring(str(path), [], nproc), f"the scoring pass {path}", tracker)
    for key in todo:
        resume = "auto" if (out / "runs" / key / "checkpoints").is_dir() else None
        log(f"{key}: training ({'resuming' if resume else 'fresh'}), {nproc} rank(s)", tag="study")
        launched(lambda: launch_local(str(config_path(out, key)), [], nproc, resume), f"the run {key}", tracker)


def launched(job, what: str, tracker: Tracker) -> None:
    """Run a job of the study; a failure ends the parent run: one line for a bad input (the checks before any rank
    starts), the exit code otherwise."""
    try:
        rc = job()
    except OdysseyError:
        tracker.end("FAILED")
        raise
    if rc:
        tracker.end("FAILED")
        raise StudyError(f"{what} failed (exit {rc}); fix it and run the study again to continue from there")


def finish_study(study: StudyCfg, tracker: Tracker, similarity: dict[str, dict]) -> dict:
    from mlflow import MlflowClient

    from study.report import aggregate

    send_journals(study.out, study.run_keys)
    summary = aggregate(study, similarity, MlflowClient(tracker.uri), tracker)
    tracker.end("FINISHED")
    log(f"report: {study.out / 'report' / 'index.html'}", tag="study")
    return summary


def aggregate_study(path: str | Path) -> dict:
    """The aggregation alone (a SLURM job that depends on the array): every run must have finished."""
    study, tracker, similarity = setup_study(path)
    missing = [key for key in study.run_keys if not finished(study.out, key)]
    if missing:
        raise StudyError(f"runs not finished: {', '.join(missing)} (no FINISHED in {study.out / 'runs'}/<run>); "
                         f"run or resubmit their training first")
    return finish_study(study, tracker, similarity)


def domain_config_path(path: str | Path, which: str) -> Path:
    """The run config of one run (a domain, or model/domain), by name or 0-based index (SLURM_ARRAY_TASK_ID);
    written by the setup."""
    study = load_study(path)
    return run_config_for(study.out, study.run_keys, which, path)


def run_config_for(out: Path, names: list[str], which: str, path: str | Path) -> Path:
    """The config file of run `which` (a name or an index into `names`), written by the study's setup."""
    name = names[int(which)] if which.isdigit() and int(which) < len(names) else which
    if name not in names:
        raise StudyError(f"no run {which!r} in the study (runs: {', '.join(names)}; indexes 0-{len(names) - 1})")
    cfg = config_path(out, name)
    if not cfg.is_file():
        raise StudyError(f"{cfg} not found: run `odyssey study {path} --setup` first")
    return cfg
