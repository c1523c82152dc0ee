"""The guard every entry point runs its work behind (the CLI, and `python -m trainer.train` and the other rank
modules under a launcher): a known bad input, an `OdysseyError`, is one line on stderr and exit 2, as is a full disk
met by any write; anything else is a bug and keeps its traceback."""
from __future__ import annotations

from typing import Callable

from data_prep import console
from data_prep.disk import unnamed_full
from data_prep.errors import OdysseyError


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
        full = unnamed_full(err)
        if full is None:
            raise
        console.error(str(full))  # every rank: each met it in its own write
        return 2
