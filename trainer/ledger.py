"""The sample ledger: which samples each rank consumed at each optimizer step, so any run can be audited.

One file per rank, `<run_dir>/ledger/rank<R>.bin`, a flat array of (step int32, sample_id int64) records; a micro-batch
skipped for a bad loss is recorded with step = -(the step it was drawn for). `sample_id`
is the global id in the training StreamingDataset (streams concatenated in config order; its `spanner` maps an id
to (shard, index in shard)). Records are flushed at each checkpoint. On resume, records past the checkpoint's step
(consumed by a run that died before its next checkpoint) are dropped, since those steps are replayed.

A full disk: a flush that fails is cut back to the last whole record and raises DiskFull. The trainer flushes at
the start of each save, where the ranks agree on it (each rank writes its own file), so every rank stops there with
the line; the checkpoint before it stays the one to resume from, and its steps' records are written again.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from data_prep.disk import append, write_atomic

RECORD = np.dtype([("step", "<i4"), ("sample_id", "<i8")])


class Ledger:
    def __init__(self, run_dir: Path, rank: int):
        self.path = run_dir / "ledger" / f"rank{rank}.bin"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._pending: list[np.ndarray] = []

    def record(self, step: int, sample_ids) -> None:
        ids = np.asarray(sample_ids, dtype=np.int64)
        rec = np.empty(len(ids), dtype=RECORD)
        rec["step"], rec["sample_id"] = step, ids
        self._pending.append(rec)

    def flush(self) -> None:
        if self._pending:
            append(self.path, np.concatenate(self._pending).tobytes())
            self._pending.clear()

    def truncate_after(self, step: int) -> None:
        """Keep only records of steps <= step (the checkpoint being resumed)."""
        self._pending.clear()
        if self.path.is_file():
            rec = np.fromfile(self.path, dtype=RECORD)
            write_atomic(self.path, rec[np.abs(rec["step"]) <= step].tobytes())


def read(run_dir: Path) -> dict[int, np.ndarray]:
    """{rank: records} for every rank's ledger in a run folder."""
    out = {}
    for p in sorted((Path(run_dir) / "ledger").glob("rank*.bin")):
        out[int(p.stem[4:])] = np.fromfile(p, dtype=RECORD)
    return out
