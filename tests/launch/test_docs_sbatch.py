"""Every complete `sbatch` command the docs show, handed to a real SLURM with `--test-only`: sbatch parses its options
and the script's #SBATCH lines and says when the job would start, without running it. The one-node test cluster has
no `gpu` partition, accounts or GPUs, so the site options go and CPU-sized ones follow the doc's (the later wins).
tests/unit/test_docs_commands.py checks the scripts and the arguments they hand on."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests import docs_blocks as docs

SITE_OPTIONS = re.compile(r"^--(partition|account|gres|gpus|qos)=")
ONE_NODE = ["--nodes=1", "--ntasks-per-node=2", "--gpus-per-node=0", "--cpus-per-task=1"]


def sbatch_commands() -> list[tuple[str, list[str]]]:
    found = {}
    for s in docs.all_snippets():
        if s.kind == "shell" and not s.skip:
            for argv in docs.snippet_commands(s):
                if argv[0] == "sbatch":
                    found.setdefault(tuple(argv), s.where)
    return sorted((where, list(argv)) for argv, where in found.items())


COMMANDS = sbatch_commands()


def test_the_docs_show_sbatch_commands():
    assert COMMANDS


def sbatch_test_only(slurm, argv: list[str], cwd) -> tuple[list[str], subprocess.CompletedProcess]:
    """`sbatch --test-only` of a documented command, resized for the one-node test cluster."""
    script = next(i for i, a in enumerate(argv) if i and not a.startswith("-"))
    options = [a for a in argv[1:script] if not SITE_OPTIONS.match(a)]
    path = argv[script] if argv[script].startswith("/") else str(docs.ROOT / argv[script])
    cmd = ["sbatch", "--test-only", *options, *ONE_NODE, path, *argv[script + 1:]]
    return cmd, subprocess.run(cmd, cwd=cwd, env={**slurm.env, "PYTHON": sys.executable}, capture_output=True,
                               text=True, timeout=60)


@pytest.mark.parametrize("where, argv", COMMANDS, ids=[f"{w}: {' '.join(a)}" for w, a in COMMANDS])
def test_documented_sbatch_command_is_accepted(where, argv, slurm, tmp_path):
    cmd, r = sbatch_test_only(slurm, argv, tmp_path)
    assert r.returncode == 0 and "to start at" in r.stderr, f"{where}: {' '.join(cmd)}\n{r.stderr}"


def test_a_planted_bad_sbatch_option_is_refused(slurm, tmp_path):
    planted = ["sbatch", "--nodes=2", "--no-such-option=1", "launch/slurm/train.sbatch", "run.yaml"]
    cmd, r = sbatch_test_only(slurm, planted, tmp_path)
    assert r.returncode != 0 and "no-such-option" in r.stderr, r.stderr
