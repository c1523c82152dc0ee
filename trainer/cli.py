"""`odyssey` command line: thin wrappers around data_prep and trainer. Known bad inputs end in one line and exit 2."""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from typing import Callable


def known_errors() -> tuple[type[BaseException], ...]:
    from data_prep.manifest import ManifestError
    from data_prep.prepare import PrepError
    from data_prep.sources import SourceError
    from data_prep.tokenize import TokenizeError
    from trainer.checkpoint import CheckpointError
    from trainer.config import ConfigError
    from trainer.study import StudyError

    return ConfigError, ManifestError, PrepError, SourceError, TokenizeError, CheckpointError, StudyError


def run_guarded(fn: Callable[[], int | None]) -> int:
    try:
        return fn() or 0
    except known_errors() as err:
        rank = int(os.environ.get("RANK", "0"))
        prefix = "odyssey: error: " if rank == 0 else f"odyssey: error [rank {rank}]: "
        if rank == 0 or os.environ.get("ODYSSEY_ALL_RANK_ERRORS"):
            print(prefix + str(err), file=sys.stderr, flush=True)
        return 2


def preflight(config: str, overrides: list[str], resume: str | None, world: int) -> None:
    """Checks that need no model weights or process group: config, domains, tokenizer. Run before spawning ranks so
    a typo gives one line instead of one per rank."""
    from data_prep.manifest import tokenizer_fingerprint
    from trainer import checkpoint
    from trainer.config import load_config
    from trainer.data import check_domains
    from trainer.engine import fill_ds_config
    from trainer.model import load_tokenizer

    cfg = load_config(config, overrides)
    check_domains(cfg, tokenizer_fingerprint(load_tokenizer(cfg.model)))
    fill_ds_config(cfg, world_size=1)
    checkpoint.starting_tag(cfg.run_dir / "checkpoints", resume, world)


def dry_run(args: argparse.Namespace) -> int:
    from data_prep.manifest import ManifestError, read_manifest
    from trainer.config import ConfigError, load_config
    from trainer.plan import plan, print_plan

    cfg = load_config(args.config, args.overrides)
    seq_len, train_samples = cfg.data.seq_len, None
    try:
        manifests = [read_manifest(s.path) for s in cfg.data.streams]
        seq_len = seq_len or manifests[0]["seq_len"]
        train_samples = sum(m["splits"]["train"]["samples"] for m in manifests)
    except ManifestError as err:
        if seq_len is None:
            raise ConfigError(f"--dry-run needs data.seq_len or readable prepared domains ({err})") from None
    world = args.world_size or args.nproc or int(os.environ.get("WORLD_SIZE", "1"))
    print_plan(cfg, plan(cfg, world, args.gpus_per_node or min(world, 8), seq_len, train_samples))
    return 0


def cmd_study(args: argparse.Namespace) -> int:
    from trainer import study

    if args.list:
        print("\n".join(d.name for d in study.load_study(args.study).domains))
    elif args.setup:
        study.setup_study(args.study)
    elif args.config_for is not None:
        print(study.domain_config(args.study, args.config_for))
    elif args.aggregate:
        study.aggregate_study(args.study)
    else:
        study.run_study(args.study)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from trainer.export import export

    out = export(args.checkpoint, args.out, args.dtype, args.overwrite)
    print(f"exported {args.checkpoint} to {out} ({args.dtype}); load it with from_pretrained('{out}')")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    if args.dry_run:
        return run_guarded(lambda: dry_run(args))
    forwarded = [args.config, *args.overrides] + ([f"--resume={args.resume}"] if args.resume else [])
    if args.nproc is None and "RANK" in os.environ:
        from trainer.train import main as train_main  # already one rank of a launched job

        return train_main(forwarded)
    rc = run_guarded(lambda: preflight(args.config, args.overrides, args.resume, args.nproc or 1))
    if rc:
        return rc
    if not args.nproc or args.nproc == 1:
        from trainer.train import main as train_main

        return train_main(forwarded)
    launcher = shutil.which("deepspeed") or os.path.join(os.path.dirname(sys.executable), "deepspeed")
    cmd = [launcher, "--num_gpus", str(args.nproc), "--master_port", str(args.master_port), "--module",
           "trainer.train", *forwarded]
    return subprocess.call(cmd)


def cmd_similarity(args: argparse.Namespace) -> int:
    from pathlib import Path

    from data_prep.manifest import read_manifest
    from data_prep.prepare import load_tokenizer
    from data_prep.similarity import MEASURES, Embedder, SampleCfg, compute, default_embedder_path, write
    from trainer.plots import similarity_heatmaps
    from trainer.tracking import Tracker

    reference = Path(args.reference)
    domains = {Path(d).name: Path(d) for d in args.domains}
    manifests = [read_manifest(p) for p in [reference, *domains.values()]]  # one line if any is not a domain
    tok_path = args.tokenizer or manifests[0]["tokenizer"]["name"]
    embedder = Embedder(args.embedder or default_embedder_path())
    cfg = SampleCfg(seed=args.seed, chunks=args.chunks, chunk_tokens=args.chunk_tokens)
    result = compute(reference, domains, load_tokenizer(tok_path), embedder, cfg)
    out = Path(args.out)
    write(result, out)
    png = similarity_heatmaps(result["pairwise"], out.with_name("similarity_heatmap.png"), MEASURES)
    tracker = Tracker(out.parent, args.experiment, enabled=True)
    tracker.start(args.run_name)
    tracker.log_params({"reference": str(reference), "seed": str(args.seed), "chunks": str(args.chunks),
                        "chunk_tokens": str(args.chunk_tokens)})
    tracker.log_metrics({f"similarity/{d}/{m}": v for d, ms in result["to_reference"].items() for m, v in ms.items()},
                        step=0)
    tracker.log_artifact(out, "similarity")
    tracker.log_artifact(png, "similarity")
    tracker.end()
    width = max(len(d) for d in domains)
    print(f"{'domain':<{width}}  " + "  ".join(f"{m:>14}" for m in MEASURES))
    for d, ms in result["to_reference"].items():
        print(f"{d:<{width}}  " + "  ".join(f"{ms[m]:>14.4g}" for m in MEASURES))
    print(f"wrote {out} and {png}; MLflow run {tracker.run_id} at {tracker.uri}")
    return 0


def main(argv: list[str] | None = None) -> int:
    import torch

    from data_prep.cli import add_prep_parser

    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # say it, instead of DeepSpeed warning that it guessed

    parser = argparse.ArgumentParser(prog="odyssey", description="Continued pretraining that shows where adaptation "
                                                                 "helps and where it hurts.")
    sub = parser.add_subparsers(dest="verb", required=True)
    add_prep_parser(sub)
    t = sub.add_parser("train", help="train from a YAML config",
                       description="Train from a YAML config. Under a launcher (deepspeed, srun, torchrun) each rank "
                                   "runs this; with --nproc N it starts N local ranks through the deepspeed launcher.")
    t.add_argument("config")
    t.add_argument("overrides", nargs="*", help="dotted.key=value, e.g. optim.lr=1e-4")
    t.add_argument("--nproc", type=int, default=None, help="local ranks to launch (default: 1, or the launcher's)")
    t.add_argument("--master-port", type=int, default=29500)
    t.add_argument("--resume", nargs="?", const="auto", default=None,
                   help="'auto' (newest complete checkpoint, or start fresh), 'latest', or a tag")
    t.add_argument("--dry-run", action="store_true", help="print the resolved config, tokens/step, steps and a "
                                                              "per-device memory estimate; start nothing")
    t.add_argument("--world-size", type=int, help="with --dry-run: devices to plan for")
    t.add_argument("--gpus-per-node", type=int, help="with --dry-run: devices per node (default: min(world, 8))")
    t.set_defaults(func=cmd_train)
    from trainer.checkpoint_eval import add_parser as add_eval_parser

    st = sub.add_parser("study", help="one run per domain + the analysis across domains",
                        description="Run a continued-pretraining study from STUDY.yaml (see trainer/study.py).")
    st.add_argument("study")
    part = st.add_mutually_exclusive_group()  # the parts a SLURM job array runs (launch/slurm/submit_study.sh)
    part.add_argument("--list", action="store_true", help="print the domain names, one per line, and exit")
    part.add_argument("--setup", action="store_true", help="only the parent run, similarities and run configs")
    part.add_argument("--config-for", metavar="DOMAIN", help="print the run config of a domain (name or 0-based "
                                                             "index, e.g. $SLURM_ARRAY_TASK_ID); needs --setup first")
    part.add_argument("--aggregate", action="store_true", help="only the analysis; every domain must have finished")
    st.set_defaults(func=cmd_study)

    add_eval_parser(sub)
    e = sub.add_parser("export", help="ZeRO checkpoint → HF folder (safetensors + tokenizer)",
                       description="Consolidate a ZeRO checkpoint with DeepSpeed's zero_to_fp32 and write a HF folder "
                                   "loadable by from_pretrained.")
    e.add_argument("checkpoint", help="a checkpoint folder (checkpoints/step_N), a checkpoints folder or a run folder "
                                      "(newest complete checkpoint)")
    e.add_argument("out", help="output folder")
    e.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32")
    e.add_argument("--overwrite", action="store_true")
    e.set_defaults(func=cmd_export)
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
    args, extra = parser.parse_known_args(argv)
    if args.verb == "train":
        # overrides may come after options: `odyssey train cfg.yaml --nproc 2 optim.lr=1e-4`
        bad = [a for a in extra if "=" not in a or a.startswith("-")]
        if bad:
            parser.error(f"unrecognized arguments: {' '.join(bad)}")
        args.overrides = [*args.overrides, *extra]
        return args.func(args)
    return run_guarded(lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())
