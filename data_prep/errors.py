"""The one kind of error a user is shown as a single line, and the guard that shows it.

Every bad input in every package (a config key, a missing shard, a foreign tokenizer, an unfinished checkpoint)
raises a subclass of `OdysseyError` with a one-line message. `guarded` turns it into that line on stderr and exit 2;
anything else is a bug and keeps its traceback. It lives in the lowest package so that every entry point (the CLI,
and `python -m trainer.train` under a launcher) uses the same guard without importing upwards.
"""
from __future__ import annotations

from typing import Callable

from data_prep import console


class OdysseyError(Exception):
    """A bad input or state the user can fix: the message is one line that names it. `rank_local`: a failure of
    this rank alone (say its disk), printed by that rank rather than only by rank 0."""

    def __init__(self, message: str = "", rank_local: bool = False):
        super().__init__(message)
        self.rank_local = rank_local


def guarded(fn: Callable[[], int | None]) -> int:
    """Run `fn`; an OdysseyError becomes one line on stderr (from rank 0 only, so N ranks don't print it N times)
    and exit code 2. So does a full disk that no write of ours named (data_prep/disk.py: unnamed_full)."""
    try:
        return fn() or 0
    except OdysseyError as err:
        if console.rank() == 0 or err.rank_local:
            console.error(str(err))
        return 2
    except Exception as err:
        from data_prep.disk import unnamed_full  # disk.py imports this module

        full = unnamed_full(err)
        if full is None:
            raise
        console.error(str(full))  # every rank: each met it in its own write
        return 2
