"""Every line Odyssey prints goes through here, so that N ranks never print a line N times and each kind of line has
one look: `[odyssey] …` progress from rank 0, plain text for a command's result, `odyssey: error: …` on stderr.

The rank is the one the launcher set (RANK; trainer.dist sets it for srun steps and plain processes), read at each
call: nothing has to be threaded through to print.
"""
from __future__ import annotations

import os
import sys


def rank() -> int:
    """This process's rank in its job (0 for a plain process)."""
    return int(os.environ.get("RANK", "0"))


def log(msg: str, every_rank: bool = False, tag: str = "odyssey") -> None:
    """A progress line, `[tag] msg`, from rank 0; `every_rank` for what only each rank knows (where it runs)."""
    if every_rank or rank() == 0:
        print(f"[{tag}] {msg}", flush=True)


def out(text: str = "", stderr: bool = False) -> None:
    """A command's result (a table, a path, a verdict) as plain text on stdout (or stderr). Printed whatever RANK
    says: scripts read these (`eval "$(python -m data_prep.redact --env-file F)"`) from shells that may carry a
    launcher's RANK; commands that print results run as one process, not as ranks."""
    print(text, file=sys.stderr if stderr else sys.stdout, flush=True)


def error(msg: str) -> None:
    """One `odyssey: error: …` line on stderr, from whichever rank calls it (the caller knows whose failure it is)."""
    print(f"odyssey: error: {msg}", file=sys.stderr, flush=True)
