"""The arguments of the verbs that run on every rank, `odyssey train` / `finetune`, `odyssey score` and `odyssey
evaluate-tasks`: one parser each, read by the CLI (trainer/cli.py) and by the modules launchers start on every rank
(`python -m trainer.train`, `trainer.scoring`, `trainer.task_matrix`), which must not import the CLI that composes
them."""
from __future__ import annotations

import argparse

from launch.hostfile import master_port


def train_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The one `odyssey train` parser: `odyssey train` and `odyssey finetune` in the CLI, and `python -m
    trainer.train`, which launchers start on every rank, all read their arguments with it."""
    parser.add_argument("config")
    parser.add_argument("overrides", nargs="*", help="dotted.key=value, e.g. optim.lr=1e-4")
    parser.add_argument("--nproc", type=int, default=None, help="local ranks to launch (default: 1, or the "
                                                                  "launcher's)")
    parser.add_argument("--master-port", type=int, default=master_port(), help="rendezvous port of an --nproc launch")
    parser.add_argument("--resume", nargs="?", const="auto", default=None,
                        help="'auto' (newest complete checkpoint, or start fresh), 'latest', or a tag")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved config, tokens/step, steps and a "
                                                               "per-device memory estimate; start nothing")
    parser.add_argument("--world-size", type=int, help="with --dry-run: devices to plan for")
    parser.add_argument("--gpus-per-node", type=int, help="with --dry-run: devices per node (default: min(world, 8))")
    parser.add_argument("--device-gib", type=float, help="with --dry-run: memory of one device to plan for (default: "
                                                         "this machine's GPU, else its RAM per local rank)")
    return parser


def rank_args(prog: str, add_arguments, argv: list[str] | None) -> argparse.Namespace:
    """A verb's arguments as a launched rank gets them (`deepspeed --module trainer.train ...`): the verb's own
    parser, plus the `--local_rank=N` the deepspeed launcher appends (LOCAL_RANK says the same). What starts ranks
    or only plans is the CLI's (`odyssey train --nproc`), not a rank's: one line says so."""
    parser = add_arguments(argparse.ArgumentParser(prog=prog))
    parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_intermixed_args(argv)
    for option in ("nproc", "master_port", "dry_run", "world_size", "gpus_per_node", "device_gib"):
        if getattr(args, option, None) != parser.get_default(option):
            parser.error(f"--{option.replace('_', '-')} is for `{prog}`, which starts the ranks or plans them; this "
                         f"process is one rank")
    return args


def score_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The one `odyssey score` parser (also `python -m trainer.scoring` on each launched rank)."""
    parser.add_argument("config", help="the run config whose training streams and base model to score")
    parser.add_argument("overrides", nargs="*", help="dotted.key=value, e.g. model.path=...")
    parser.add_argument("--nproc", type=int, default=None, help="local ranks (the model under ZeRO-3 across them)")
    parser.add_argument("--master-port", type=int, default=master_port(), help="rendezvous port of an --nproc launch")
    parser.add_argument("--needed-only", action="store_true", help="do nothing unless the config sets "
                                                                   "loss.select_top (for a script that runs this "
                                                                   "before every training job)")
    return parser


def matrix_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The one `odyssey evaluate-tasks` parser (also `python -m trainer.task_matrix` on each launched rank)."""
    parser.add_argument("matrix", help="the matrix YAML (docs/TRAINING.md)")
    parser.add_argument("--nproc", type=int, default=None, help="local ranks (data-parallel; ZeRO-3 with zero3: true)")
    parser.add_argument("--master-port", type=int, default=master_port(), help="rendezvous port of an --nproc launch")
    return parser
