"""The guard every entry point runs its work behind (the CLI, and `python -m trainer.train` and the other rank
modules under a launcher): a known bad input, an `OdysseyError`, is one line on stderr and exit 2, as is a full disk
met by any write; anything else is a bug and keeps its traceback."""
from __future__ import annotations

import gc
import sys
from typing import Callable, NoReturn

from data_prep import console
from data_prep.disk import unnamed_full
from data_prep.errors import OdysseyError


def guarded(fn: Callable[[], int | None]) -> int:
    """Run `fn`; an OdysseyError becomes one line on stderr (from rank 0 only, so N ranks don't print it N times)
    and exit code 2. So does a full disk that no write of ours named (data_prep/disk.py: unnamed_full)."""
    try:
        code = fn() or 0
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
    leave_process_group()
    return code


def leave_process_group() -> None:
    """A rank that ended cleanly destroys its process group, as torchtitan does, and only then: left to interpreter
    exit, gloo's worker threads can still hold tensors and abort the process ("terminate called without an active
    exception", exit -6, after all the work was done); NCCL warns. After a failure another rank may still be in a
    collective, where destroying can hang (torchtitan#1342), so exits 2 skip it."""
    distributed = sys.modules.get("torch.distributed")  # only a process that imported it can have joined a group
    if distributed is not None and distributed.is_available() and distributed.is_initialized():
        distributed.destroy_process_group()


def exit_process(code: int) -> NoReturn:
    """End a `python -m` entry point whose work is done (never a library call: cyclic garbage made before it is
    never collected). The interpreter's last cyclic collection walks every object that importing torch, transformers
    and DeepSpeed made, ~1.7 s per process for nothing at exit; frozen, they are skipped. atexit handlers and module
    teardown run as before."""
    gc.freeze()
    sys.exit(code)
