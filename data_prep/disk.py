"""A full disk, wherever a job writes: the one line it ends in, and writes that leave nothing half-written.

Every write of a run (token tables, curves, the baseline cache, the ledger, the MLflow journal and a local store,
the base-weight snapshot, task-matrix cells; checkpoints have their own agreement in trainer/checkpoint.py) goes
through `writing`, `write_atomic` or `append`, which turn ENOSPC / EDQUOT into a `DiskFull` whose message names the path and the free
space on its filesystem. A file is either replaced whole (a temp file beside it, then os.replace) or appended to
whole (a failed append is cut back to where it began), so a later reader never meets a torn file. Writes that only
some ranks make are agreed on by all of them (trainer/dist.py: stop_together), so every rank stops with the line.
"""
from __future__ import annotations

import errno
import os
import shutil
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Callable

from data_prep.errors import OdysseyError

FULL = (errno.ENOSPC, errno.EDQUOT)
FULL_TEXT = ("No space left on device", "Disk quota exceeded", "database or disk is full")
AGAIN = "free space and run it again (a training run: --resume auto continues from the last checkpoint)"


class DiskFull(OdysseyError):
    """A write that met a full disk or quota: one line naming the path and the free space there."""


def free_bytes(path: Path) -> int:
    """Free bytes on the filesystem of `path` (or of its nearest existing parent)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def size_text(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def is_full(err: BaseException | None) -> bool:
    """Whether an error, or one it was raised from (MLflow wraps SQLAlchemy, which wraps sqlite3), is a full disk."""
    return any(isinstance(e, OSError) and e.errno in FULL or getattr(e, "sqlite_errorname", None) == "SQLITE_FULL"
               or any(t in str(e)[:2000] for t in FULL_TEXT) for e in _causes(err))


def _causes(err: BaseException | None):
    """The error and those it was raised from (MLflow wraps SQLAlchemy, which wraps sqlite3), at most 8."""
    for _ in range(8):
        if err is None:
            return
        yield err
        err = getattr(err, "orig", None) or err.__cause__ or err.__context__


def unnamed_full(err: BaseException) -> DiskFull | None:
    """A full disk met by a write that no `writing` names (a library's own files): the line, naming the file the
    error names if any. None when `err` is not a full disk. The last resort of `guarded`."""
    if not is_full(err):
        return None
    path = next((e.filename for e in _causes(err) if isinstance(e, OSError) and e.filename), None)
    if path is not None:
        return disk_full(path, err)
    first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
    return DiskFull(f"no space left on a write ({first}); {AGAIN}")


def disk_full(path: Path | str, err: BaseException | None = None) -> DiskFull:
    """The one line: the path, why, the free space on its filesystem, and what to do."""
    why = "disk quota exceeded" if isinstance(err, OSError) and err.errno == errno.EDQUOT else "no space left"
    return DiskFull(f"{why} writing {path} ({size_text(free_bytes(Path(path)))} free on its filesystem); {AGAIN}")


@contextmanager
def writing(path: Path | str):
    """A full disk inside the block becomes `DiskFull` naming `path`; other errors pass unchanged. Any error counts
    that `is_full` recognises: libraries report ENOSPC in their own types (safetensors' SafetensorError, sqlite's)."""
    try:
        yield
    except DiskFull:
        raise
    except Exception as err:
        if not is_full(err):
            raise
        raise disk_full(path, err) from None


def write_atomic(path: Path, data: str | bytes | Callable[[Path], object]) -> Path:
    """Write `path` whole or not at all: text, bytes, or `data(tmp)` (a writer given the temp path, which keeps the
    suffix: savefig and to_parquet read the format from it) into a temp file beside it, then os.replace."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    with writing(path):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if callable(data):
                data(tmp)
            else:
                tmp.write_bytes(data.encode() if isinstance(data, str) else data)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    return path


def append(path: Path, data: bytes) -> None:
    """Append `data` to `path` whole: a write that fails (a full disk) is cut back to where it began, so the file
    never ends in a torn record that the next append would run into."""
    path = Path(path)
    with writing(path):
        with open(path, "ab", buffering=0) as f:
            start = f.seek(0, os.SEEK_END)
            try:
                view = memoryview(data)
                while view:
                    view = view[f.write(view):]
            except BaseException:
                with suppress(OSError):  # not a regular file (say /dev/full): nothing to cut back
                    f.truncate(start)
                raise

