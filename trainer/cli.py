"""The trainer's verbs: `odyssey train`, `finetune`, `eval --checkpoints`, `score`, `export`, `evaluate-tasks` and
`sync`.
Composed into the `odyssey` command by odyssey/cli.py; heavy imports wait until a verb runs."""
from __future__ import annotations

import argparse
import base64
import json
import os
import subprocess
import sys

from data_prep import console
from launch.hostfile import master_port
from trainer.args import matrix_arguments, score_arguments, train_arguments
from trainer.dist import Dist, launched_rank


def add_parser(sub) -> None:
    add_train_parser(sub, "train", "train from a YAML config", cmd_train)
    add_train_parser(sub, "finetune", "task fine-tuning: train on task data (odyssey prep --task), loss on targets "
                                      "only", cmd_finetune)
    add_eval_parser(sub)
    s = sub.add_parser("score", help="the base model's per-token losses on the training streams (for loss.select_top)",
                       description="Score every training stream of a run config with its base model, once, and store "
                                   "the per-token losses with the shards (trainer/scoring.py); loss.select_top reads "
                                   "them. Streams already scored for this model are skipped.")
    score_arguments(s)
    s.set_defaults(func=cmd_score, takes_overrides=True)
    add_export_parser(sub)
    add_task_matrix_parser(sub)
    y = sub.add_parser("sync", help="send what a run's tracking journal still holds to MLflow",
                       description="Replay the MLflow calls a run could not send (server unreachable, job ended): "
                                   "<run_dir>/mlflow/*.jsonl past their .sent marks, in order.")
    y.add_argument("run_dir")
    y.add_argument("--uri", help="tracking URI (default: the run's tracking.uri, else MLFLOW_TRACKING_URI, else the "
                                 "run's embedded store)")
    y.set_defaults(func=cmd_sync)


def add_train_parser(sub, name: str, help: str, func) -> None:
    t = sub.add_parser(name, help=help,
                       description=f"{help[0].upper()}{help[1:]}. Under a launcher (deepspeed, srun, torchrun) each "
                                   "rank runs this; with --nproc N it starts N local ranks through the deepspeed "
                                   "launcher.")
    train_arguments(t)
    t.set_defaults(func=func, takes_overrides=True)


def add_eval_parser(sub) -> None:
    p = sub.add_parser("eval", help="evaluate checkpoints outside the training job",
                       description="Evaluate checkpoints as they appear, outside the training job "
                                   "(trainer/checkpoint_eval.py).")
    p.add_argument("--checkpoints", required=True, help="a run's checkpoints/ folder, or a folder of HF checkpoints")
    p.add_argument("--config", help="run config (default: the run folder's config.yaml)")
    p.add_argument("--watch", action="store_true", help="keep polling for new checkpoints")
    p.add_argument("--poll", type=float, default=30.0, help="seconds between polls with --watch")
    p.add_argument("--until-step", type=int, help="with --watch: stop once a checkpoint at this step is evaluated")
    p.add_argument("--new-run", action="store_true", help="log into a new MLflow run instead of the training run")
    p.add_argument("--fast", action="store_true", help="check checkpoint file sizes only, not their xxh64 checksums")
    p.set_defaults(func=cmd_eval)


def add_export_parser(sub) -> None:
    e = sub.add_parser("export", help="ZeRO checkpoint → HF folder (safetensors + tokenizer)",
                       description="Consolidate a ZeRO checkpoint with DeepSpeed's zero_to_fp32 and write a HF folder "
                                   "loadable by from_pretrained.")
    e.add_argument("checkpoint", help="a checkpoint folder (checkpoints/step_N), a checkpoints folder or a run folder "
                                      "(newest complete checkpoint)")
    e.add_argument("out", help="output folder")
    e.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32")
    e.add_argument("--overwrite", action="store_true")
    e.add_argument("--fast", action="store_true", help="check checkpoint file sizes only, not their xxh64 checksums")
    e.set_defaults(func=cmd_export)


def add_task_matrix_parser(sub) -> None:
    p = sub.add_parser("evaluate-tasks", help="models × task test sets × k-shot: the generalization matrix",
                       description="Score models (base, fine-tuned runs, HF folders) on prepared task test sets at "
                                   "k shots; results to MLflow, matrix.csv and a heatmap (trainer/task_matrix.py).")
    matrix_arguments(p)
    p.set_defaults(func=cmd_evaluate_tasks)


def preflight(config: str, overrides: list[str], resume: str | None, world: int) -> None:
    """Checks that need no model weights or process group: config, domains, tokenizer, the model's limits (its
    config.json) and the DeepSpeed JSON. Run before spawning ranks so a typo gives one line instead of one per rank."""
    from trainer import checkpoint
    from trainer.config import load_config
    from trainer.engine import fill_ds_config
    from trainer.scoring import check_scored

    cfg = load_config(config, overrides)
    check_scored(cfg, check_inputs(cfg))
    fill_ds_config(cfg, world_size=world)  # DeepSpeed's own config model checks it (trainer/engine.py)
    checkpoint.starting_tag(cfg.run_dir / "checkpoints", resume, Dist(world=world), fast=True)  # the ranks hash


def check_inputs(cfg) -> dict:
    """The tokenizer, the domains (sizes only: the ranks hash the shards, once per node, on the nodes that read them,
    before any weight loads) and the model's limits. Returns the domains."""
    from data_prep.manifest import tokenizer_fingerprint
    from trainer.data import check_domains
    from trainer.model import load_tokenizer
    from trainer.plan import check_model_limits, model_config

    tokenizer = load_tokenizer(cfg.model)
    domains, seq_len = check_domains(cfg, tokenizer_fingerprint(tokenizer), hashes=False)
    check_model_limits(cfg.model, model_config(cfg.model.path, cfg.model.trust_remote_code), seq_len, len(tokenizer))
    return domains


def launch_local(config: str, overrides: list[str], nproc: int, resume: str | None = None,
                 port: int = master_port()) -> int:
    """A training job of `nproc` ranks on this machine, in child processes (the deepspeed launcher for more than
    one): checked first, so a bad input is one line (an OdysseyError here) before any rank starts. Returns the
    job's exit code."""
    preflight(config, overrides, resume, nproc)
    forwarded = [config, *overrides] + ([f"--resume={resume}"] if resume else [])
    if nproc == 1:
        return subprocess.call([sys.executable, "-m", "trainer.train", *forwarded])
    return deepspeed_launch("trainer.train", forwarded, nproc, port)


def deepspeed_launch(module: str, forwarded: list[str], nproc: int, port: int) -> int:
    """`python -m module ...` as `nproc` ranks on this node under DeepSpeed's per-node launcher, which sets each
    rank's environment, forwards SIGINT/SIGTERM to the ranks and stops the others when one fails; returns the job's
    exit code.

    The launcher runs in this process, as `python -m deepspeed.launcher.launch` would run it: the checks before it
    have imported DeepSpeed already, and a launcher process of its own would import it again (~4 s a job). For one
    node the `deepspeed` runner only encodes this world_info and starts the same launcher (runner.py)."""
    import signal

    from deepspeed.launcher import launch

    argv, handlers = sys.argv, {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    sys.argv = launcher_argv(module, forwarded, nproc, port)
    try:
        launch.main()  # returns when every rank ended well; exits with the failed rank's code (or 1 on a signal)
        return 0
    except SystemExit as stop:
        return stop.code if isinstance(stop.code, int) else 1
    finally:  # a study launches many jobs from one process: the launcher's handlers name this job's ranks
        sys.argv = argv
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


def launcher_argv(module: str, forwarded: list[str], nproc: int, port: int) -> list[str]:
    """`deepspeed.launcher.launch ...` for `nproc` ranks of `python -m module ...` on this node: what the
    `deepspeed` runner passes it for one node."""
    world_info = base64.urlsafe_b64encode(json.dumps({"localhost": list(range(nproc))}).encode()).decode()
    return ["deepspeed.launcher.launch", f"--world_info={world_info}", "--master_addr=127.0.0.1",
            f"--master_port={port}", "--module", module, *forwarded]


def dry_run(args: argparse.Namespace) -> int:
    from data_prep.manifest import ManifestError, read_manifest
    from trainer.config import ConfigError, load_config
    from trainer.plan import plan, print_plan

    cfg = load_config(args.config, args.overrides)
    seq_len, train_samples, vocab = cfg.data.seq_len, None, None
    try:
        manifests = [read_manifest(s.path) for s in cfg.data.streams]
        seq_len = seq_len or manifests[0]["seq_len"]
        train_samples = sum(m["splits"]["train"]["samples"] for m in manifests)
        vocab = manifests[0]["tokenizer"]["vocab_size"]  # the tokenizer the shards (and so the run) were made with
    except ManifestError as err:
        if seq_len is None:
            raise ConfigError(f"--dry-run needs data.seq_len or readable prepared domains ({err})") from None
    world = args.world_size or args.nproc or int(os.environ.get("WORLD_SIZE", "1"))
    print_plan(cfg, plan(cfg, world, args.gpus_per_node or min(world, 8), seq_len, train_samples, args.device_gib,
                         vocab))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """A launched rank, or alone: this process is the rank. With --nproc N > 1: N local ranks, and this process
    imports only what the checks need (the training stack is the ranks' to import)."""
    if args.dry_run:
        return dry_run(args)
    if args.nproc and args.nproc > 1:
        return launch_local(args.config, args.overrides, args.nproc, args.resume, args.master_port)
    from trainer.train import run_rank

    if args.nproc is None and launched_rank():
        return run_rank(args.config, args.overrides, args.resume)
    preflight(args.config, args.overrides, args.resume, 1)
    return run_rank(args.config, args.overrides, args.resume)


def cmd_finetune(args: argparse.Namespace) -> int:
    """`odyssey train` on task data: the same Trainer, its batches carrying labels -100 off the targets. Every stream
    must be a task dataset, so a packed pretraining domain is not fine-tuned on by mistake."""
    from trainer.config import ConfigError, load_config
    from trainer.data import stream_kinds

    # cheap, so checked wherever this runs: before ranks start, and on each rank srun started as `odyssey finetune`
    not_tasks = [n for n, kind in stream_kinds(load_config(args.config, args.overrides)).items() if kind != "task"]
    if not_tasks:
        raise ConfigError(f"odyssey finetune trains on task data (odyssey prep --task); stream(s) "
                          f"{', '.join(not_tasks)} are packed pretraining domains: use odyssey train for those")
    return cmd_train(args)


def cmd_evaluate_tasks(args: argparse.Namespace) -> int:
    """Checked once here, then this process scores (alone or as a launched rank), or N local ranks are started."""
    from trainer.task_matrix import check_matrix, evaluate_matrix, export_runs, load_matrix

    cfg = load_matrix(args.matrix)
    if args.nproc is None and launched_rank():
        evaluate_matrix(cfg)
        return 0
    check_matrix(cfg)
    export_runs(cfg)
    if not args.nproc or args.nproc == 1:
        evaluate_matrix(cfg)
        return 0
    return deepspeed_launch("trainer.task_matrix", [args.matrix], args.nproc, args.master_port)


def cmd_score(args: argparse.Namespace) -> int:
    """This process scores (alone, or as a launched rank), or N local ranks are started."""
    from trainer.scoring import run_scoring

    if args.nproc is None and launched_rank():
        run_scoring(args.config, args.overrides, args.needed_only)
    elif args.nproc and args.nproc > 1:
        return launch_scoring(args.config, args.overrides, args.nproc, args.master_port, args.needed_only)
    else:  # alone: the checks first (model limits included), then the pass, which says what is already current
        scoring_wanted(args.config, args.overrides, args.needed_only)
        run_scoring(args.config, args.overrides, args.needed_only)
    return 0


def scoring_wanted(config: str, overrides: list[str], needed_only: bool) -> bool:
    """Whether `odyssey score` has work: a stream without current scores (`needed_only`: only where the config sets
    loss.select_top), checked as far as it can be before any rank starts: config, tokenizer, domains, the model's
    limits; a stream that can never be scored is one line."""
    from trainer.config import load_config
    from trainer.scoring import streams_to_score

    cfg = load_config(config, overrides)
    if needed_only and cfg.loss.select_top is None:
        return False
    cfg.loss.select_top = None  # what scoring makes is what select_top requires
    return bool(streams_to_score(cfg, check_inputs(cfg)))


def launch_scoring(config: str, overrides: list[str], nproc: int, port: int = master_port(),
                   needed_only: bool = False) -> int:
    """`odyssey score` in child processes, as `launch_local` starts training: one, or `nproc` ranks under the
    deepspeed launcher. Returns the exit code."""
    if not scoring_wanted(config, overrides, needed_only):
        return 0
    if nproc == 1:
        return subprocess.call([sys.executable, "-m", "trainer.scoring", config, *overrides])
    return deepspeed_launch("trainer.scoring", [config, *overrides], nproc, port)


def cmd_eval(args: argparse.Namespace) -> int:
    from trainer.checkpoint_eval import announce_scored, evaluate_checkpoints

    return announce_scored(evaluate_checkpoints(args.checkpoints, args.config, args.watch, args.poll, args.new_run,
                                       args.until_step, args.fast))


def cmd_export(args: argparse.Namespace) -> int:
    from trainer.export import export

    out = export(args.checkpoint, args.out, args.dtype, args.overwrite, args.fast)
    console.out(f"exported {args.checkpoint} to {out} ({args.dtype}); load it with from_pretrained('{out}')")
    return 0


def cmd_sync(args: argparse.Namespace) -> int:
    from pathlib import Path

    from trainer.tracking import TrackingError, sync

    run_dir = Path(args.run_dir)
    if not (run_dir / "mlflow").is_dir():
        raise TrackingError(f"{run_dir}: no tracking journal (mlflow/*.jsonl); not an Odyssey run folder")
    uri, sent, left = sync(run_dir, args.uri)
    if left:
        raise TrackingError(f"sent {sent} call(s) to {uri}; it became unreachable with {left} left in "
                            f"{run_dir / 'mlflow'}; run odyssey sync again")
    console.out(f"sent {sent} call(s) from {run_dir / 'mlflow'} to {uri}; nothing left")
    return 0
