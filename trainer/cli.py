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
    from trainer.checkpoint import CheckpointError
    from trainer.config import ConfigError

    return ConfigError, ManifestError, PrepError, SourceError, CheckpointError


def run_guarded(fn: Callable[[], int | None]) -> int:
    try:
        return fn() or 0
    except known_errors() as err:
        rank = int(os.environ.get("RANK", "0"))
        prefix = "odyssey: error: " if rank == 0 else f"odyssey: error [rank {rank}]: "
        if rank == 0 or os.environ.get("ODYSSEY_ALL_RANK_ERRORS"):
            print(prefix + str(err), file=sys.stderr, flush=True)
        return 2


def preflight(config: str, overrides: list[str], resume: str | None) -> None:
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
    ckpt_root = cfg.run_dir / "checkpoints"
    if resume:
        checkpoint.resolve(ckpt_root, resume)
    else:
        checkpoint.check_fresh_start(ckpt_root)


def cmd_train(args: argparse.Namespace) -> int:
    forwarded = [args.config, *args.overrides] + ([f"--resume={args.resume}"] if args.resume else [])
    if args.nproc is None and "RANK" in os.environ:
        from trainer.train import main as train_main  # already one rank of a launched job

        return train_main(forwarded)
    rc = run_guarded(lambda: preflight(args.config, args.overrides, args.resume))
    if rc:
        return rc
    if not args.nproc or args.nproc == 1:
        from trainer.train import main as train_main

        return train_main(forwarded)
    launcher = shutil.which("deepspeed") or os.path.join(os.path.dirname(sys.executable), "deepspeed")
    cmd = [launcher, "--num_gpus", str(args.nproc), "--master_port", str(args.master_port), "--module",
           "trainer.train", *forwarded]
    return subprocess.call(cmd)


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
    t.set_defaults(func=cmd_train)
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
