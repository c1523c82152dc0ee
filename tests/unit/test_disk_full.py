"""The one line a full disk ends in (data_prep/disk.py), without a real full disk: ENOSPC and EDQUOT name the path and
the free space, other errors pass unchanged, a full sqlite store is told apart inside MLflow's wrapping, and an
atomic write that fails leaves the old file and no temp file. tests/faults/test_disk.py fills real filesystems."""
import errno
import sqlite3

import pytest

from data_prep.disk import DiskFull, is_full, write_atomic, writing


def test_enospc_and_edquot_become_one_line_naming_the_path(tmp_path):
    target = tmp_path / "tokens" / "prose" / "step_6.parquet"  # its folder need not exist
    with pytest.raises(DiskFull) as err:
        with writing(target):
            raise OSError(errno.ENOSPC, "No space left on device")
    line = str(err.value)
    assert line.startswith(f"no space left writing {target} (") and " free on its filesystem); " in line
    assert line.endswith("free space and run it again (a training run: --resume auto continues from the last "
                         "checkpoint)")
    with pytest.raises(DiskFull, match="^disk quota exceeded writing "):
        with writing(target):
            raise OSError(errno.EDQUOT, "Disk quota exceeded")
    with pytest.raises(PermissionError):  # not a full disk: unchanged, with its traceback
        with writing(target):
            raise PermissionError(errno.EACCES, "Permission denied")


def test_a_full_sqlite_store_is_found_inside_the_errors_that_wrap_it():
    try:
        try:
            raise sqlite3.OperationalError("database or disk is full")
        except sqlite3.OperationalError as inner:
            raise RuntimeError("TEMPORARILY_UNAVAILABLE: SQLAlchemy database error") from inner
    except RuntimeError as outer:
        assert is_full(outer)
    assert not is_full(RuntimeError("connection refused")) and not is_full(OSError(errno.EIO, "I/O error"))


def test_a_failed_atomic_write_keeps_the_old_file_and_leaves_no_temp_file(tmp_path):
    target = write_atomic(tmp_path / "curves.png", b"old")

    def half_then_full(tmp):
        tmp.write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(DiskFull, match=f"^no space left writing {target} "):
        write_atomic(target, half_then_full)
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["curves.png"]
    assert write_atomic(target, "new").read_text() == "new"


def test_the_base_weight_snapshot_on_a_full_disk_is_one_line(tmp_path):
    """torch.save's own zip writer reports a full disk as a RuntimeError; the snapshot writes through a Python file,
    so the real ENOSPC of /dev/full (where its temp file points) names the snapshot's path."""
    import torch

    from trainer.dist import Dist
    from trainer.weight_delta import WeightDelta

    delta = WeightDelta(tmp_path, Dist())
    delta.path.parent.mkdir(parents=True)
    (delta.path.parent / f".{delta.path.stem}.tmp{delta.path.suffix}").symlink_to("/dev/full")
    with pytest.raises(DiskFull, match=f"^no space left writing {delta.path} "):
        delta.snapshot(torch.nn.Linear(256, 256))
    assert list(delta.path.parent.iterdir()) == []
    delta.snapshot(torch.nn.Linear(256, 256))
    assert delta.load() and set(delta.base) == {"weight", "bias"}


def test_a_library_s_own_full_disk_error_is_one_line(tmp_path, capsys):
    """safetensors and others report ENOSPC in their own types: `writing` names the path it guards, and the command
    guard turns one that nothing named into the line too (the file the OSError names, else the error's first
    line); any other error keeps its traceback."""
    from data_prep.guard import guarded

    class SafetensorError(Exception):
        pass

    full = SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space '
                           'left on device" })')
    with pytest.raises(DiskFull, match=f"^no space left writing {tmp_path / 'hf'} "):
        with writing(tmp_path / "hf"):
            raise full

    def fill_dev_full():
        with open("/dev/full", "wb") as f:
            f.write(b"x" * 100_000)

    for fn, line in ((fill_dev_full, "no space left on a write ([Errno 28] No space left on device); free space"),
                     (lambda: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device", "/x/y")),
                      "no space left writing /x/y (")):
        assert guarded(fn) == 2
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 1 and err[0].startswith(f"odyssey: error: {line}"), err
    with pytest.raises(ValueError):
        guarded(lambda: int("x"))
