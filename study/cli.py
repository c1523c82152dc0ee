"""The study's verbs: `odyssey study` and `odyssey similarity`. Composed into `odyssey` by odyssey/cli.py."""
from __future__ import annotations

import argparse
from pathlib import Path

from data_prep import console


def add_parser(sub) -> None:
    st = sub.add_parser("study", help="one run per domain + the analysis across domains",
                        description="Run a study from STUDY.yaml: one continued-pretraining run per model and "
                                    "domain, then similarity, correlation, token attribution and a report. The "
                                    "file: docs/CONFIG.md (Study file); what it measures and the paper's study: "
                                    "docs/ANALYSIS.md; on SLURM: docs/LAUNCH.md; `kind: tasks`: docs/TASKS.md.")
    st.add_argument("study")
    part = st.add_mutually_exclusive_group()  # the parts a SLURM job array runs (launch/slurm/submit_study.sh)
    part.add_argument("--list", action="store_true", help="print the runs (domain, or model/domain with several "
                                                          "models), one per line, and exit")
    part.add_argument("--dry-run", action="store_true", help="print the plan: runs, tokens per run, GPU-hours and "
                                                             "memory per device for each model; no compute")
    part.add_argument("--setup", action="store_true", help="only the parent run, similarities and run configs")
    part.add_argument("--config-for", metavar="RUN", help="print the run config of a run (as --list names it, or its "
                                                          "0-based index, e.g. $SLURM_ARRAY_TASK_ID); needs --setup")
    part.add_argument("--aggregate", action="store_true", help="only the analysis; every run must have finished")
    st.add_argument("--world-size", type=int, help="with --dry-run: devices per run (default: the study's nproc)")
    st.add_argument("--gpus-per-node", type=int, help="with --dry-run: devices per node (default: min(world, 8))")
    st.add_argument("--peak-tflops", type=float, help="with --dry-run: peak per device (default: H100 SXM bf16, 989)")
    st.add_argument("--mfu", type=float, help="with --dry-run: the MFU to assume (default 0.40)")
    st.set_defaults(func=cmd_study)

    s = sub.add_parser("similarity", help="similarity of prepared domains to a reference sample",
                       description="Token-unigram and sentence-embedding similarity of each prepared domain to a "
                                   "reference (a prepared sample of the model's original pretraining data).")
    s.add_argument("--reference", required=True, help="prepared reference domain folder")
    s.add_argument("--domains", nargs="+", required=True, help="prepared domain folders (named by folder)")
    s.add_argument("--out", default="similarity/similarity.json", help="where to write similarity.json")
    s.add_argument("--tokenizer", help="the LM tokenizer the shards were made with (default: the manifest's)")
    s.add_argument("--embedder", help="local sentence encoder folder (default: the offline all-MiniLM-L6-v2)")
    s.add_argument("--chunks", type=int, default=256, help="text chunks sampled per domain")
    s.add_argument("--chunk-tokens", type=int, default=128, help="LM tokens per chunk")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--experiment", default="odyssey-similarity", help="MLflow experiment")
    s.add_argument("--run-name", default="similarity")
    s.set_defaults(func=cmd_similarity)


def cmd_study(args: argparse.Namespace) -> int:
    from study import runs
    from study.config import load_study

    task_study = task_study_of(args.study)
    if task_study is not None:
        return cmd_task_study(args, task_study)
    if args.list:
        console.out("\n".join(load_study(args.study).run_keys))
    elif args.dry_run:
        return dry_run(args)
    elif args.setup:
        runs.setup_study(args.study)[1].drain()  # the parent run stays open for the array and the aggregation
    elif args.config_for is not None:
        console.out(runs.domain_config_path(args.study, args.config_for))
    elif args.aggregate:
        runs.aggregate_study(args.study)
    else:
        runs.run_study(args.study)
    return 0


def task_study_of(path: str):
    """The study file as a task study (`kind: tasks`), or None for a continued-pretraining study."""
    from data_prep.config import read_yaml, validate
    from study.task_config import TaskStudyCfg

    tree = read_yaml(path) if Path(path).is_file() else {}
    return validate(TaskStudyCfg, tree, "study") if isinstance(tree, dict) and tree.get("kind") == "tasks" else None


def cmd_task_study(args: argparse.Namespace, study) -> int:
    from data_prep.config import ConfigError
    from study import task_study

    if args.dry_run:
        raise ConfigError("--dry-run plans continued-pretraining studies; for a task study use odyssey finetune "
                          "--dry-run on a run config (--setup writes them under configs/)")
    if args.list:
        console.out("\n".join(study.run_keys))
    elif args.config_for is not None:
        console.out(task_study.run(args.study, study, "config-for", args.config_for))
    else:
        task_study.run(args.study, study, "setup" if args.setup else "aggregate" if args.aggregate else None)
    return 0


def dry_run(args: argparse.Namespace) -> int:
    from data_prep.config import ConfigError
    from study.config import load_study
    from study.plan import DEFAULT_MFU, H100_BF16_TFLOPS, check_resolved, print_study_plan, study_plan

    study = load_study(args.study)
    world = args.world_size or study.nproc
    gpus = args.gpus_per_node or min(world, 8)
    peak, mfu = args.peak_tflops or H100_BF16_TFLOPS, args.mfu or DEFAULT_MFU
    if world < 1 or gpus < 1 or world % gpus or peak <= 0 or not 0 < mfu <= 1:
        raise ConfigError("--dry-run needs world size a multiple of --gpus-per-node, --peak-tflops > 0 and "
                          "0 < --mfu <= 1")
    plans = study_plan(study, world, gpus, peak, mfu)
    print_study_plan(study, plans, world, gpus, peak, mfu)
    check_resolved(plans)  # a model named on the hub that this machine cannot get: its rows above, then one line
    return 0


def cmd_similarity(args: argparse.Namespace) -> int:
    from data_prep.manifest import read_manifest
    from data_prep.similarity import SampleCfg
    from study.similarity import log_similarity, measure, print_table
    from trainer.tracking import Tracker

    reference = Path(args.reference)
    domains = {Path(d).name: Path(d) for d in args.domains}
    manifests = [read_manifest(p) for p in [reference, *domains.values()]]  # one line if any is not a domain
    out = Path(args.out)
    result, png = measure(reference, domains, args.tokenizer or manifests[0]["tokenizer"]["name"], args.embedder,
                          SampleCfg(seed=args.seed, chunks=args.chunks, chunk_tokens=args.chunk_tokens), out)
    tracker = Tracker(out.parent, args.experiment, enabled=True, journal="similarity")
    tracker.start(args.run_name)
    tracker.log_params({"reference": str(reference), "seed": str(args.seed), "chunks": str(args.chunks),
                        "chunk_tokens": str(args.chunk_tokens)})
    log_similarity(tracker, result, [out, png])
    tracker.end()
    print_table(result)
    console.out(f"wrote {out} and {png}; MLflow run {tracker.run_id} at {tracker.uri}")
    return 0
