"""`odyssey VERB ...`: each package adds its own verbs; this file only composes them under one parser and runs the
chosen one behind the one error guard (a known bad input: one line on stderr, exit 2).

    prep                                                        data_prep/cli.py
    train, finetune, eval, export, evaluate-tasks, sync         trainer/cli.py
    study, similarity                                           study/cli.py
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import NoReturn

from odyssey.own_packages import check_own_packages

check_own_packages()  # before importing them: a stranger's `trainer` would fail below, or half-work

from data_prep import cli as prep_cli  # noqa: E402
from data_prep.guard import exit_process, guarded  # noqa: E402
from study import cli as study_cli  # noqa: E402
from trainer import cli as trainer_cli  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="odyssey", description="Continued pretraining that shows where adaptation "
                                                                 "helps and where it hurts.")
    sub = parser.add_subparsers(dest="verb", required=True)
    for package_cli in (prep_cli, trainer_cli, study_cli):
        package_cli.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    import torch

    # the ranks and runs this command starts must not import a working-directory folder named like a package
    os.environ.setdefault("PYTHONSAFEPATH", "1")
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # say it, instead of DeepSpeed warning that it guessed
    args = parse_args(sys.argv[1:] if argv is None else argv)
    return guarded(lambda: args.func(args))


def console() -> NoReturn:
    """The `odyssey` command (and `python -m odyssey`): main, then the process ends without the interpreter's last
    collection over everything it imported (data_prep/guard.py: exit_process)."""
    exit_process(main())


def parse_args(argv: list[str]) -> argparse.Namespace:
    """`odyssey ARGV` as main reads it (the docs test checks every documented command with it); a bad argument is
    argparse's usage line and exit 2."""
    # under the deepspeed launcher (`deepspeed --module odyssey eval ...`) every rank also gets --local_rank=N;
    # the rank's LOCAL_RANK variable says the same
    argv = [a for a in argv if not a.startswith("--local_rank")]
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if getattr(args, "takes_overrides", False):
        # dotted.key=value overrides may come after options: `odyssey train cfg.yaml --nproc 2 optim.lr=1e-4`
        bad = [a for a in extra if "=" not in a or a.startswith("-")]
        if bad:
            parser.error(f"unrecognized arguments: {' '.join(bad)}")
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


if __name__ == "__main__":
    console()
