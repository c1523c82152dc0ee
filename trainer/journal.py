"""The tracking journal: every MLflow call of a run, written to the run folder before it is sent.

    <run_dir>/mlflow/<name>.jsonl   one record per call (create, resume, params, metrics, tag, artifact, end), in order
    <run_dir>/mlflow/<name>.sent    the seq of the last record the server took
    <run_dir>/mlflow/runs.json      journal run keys → MLflow run ids ("pending-…" keys name runs not created yet)

Records after `.sent` are replayed in order when the server is back: by the running job's writer, on the next start
of the run, or by `odyssey sync RUN_DIR`. So an outage, or a crash between logging and sending, loses nothing.
"""
from __future__ import annotations

import fcntl
import json
import os
from contextlib import contextmanager
from pathlib import Path

from data_prep.disk import DiskFull, append, write_atomic


def read_records(path: Path) -> list[dict]:
    """The records of a JSONL file this project appends to (a journal, evaluate-tasks' cells): a line torn by a crash
    mid-write is skipped, since the call or cell it held never completed."""
    out = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return out


class Journal:
    def __init__(self, folder: Path, name: str):
        self.folder = folder
        self.path = folder / f"{name}.jsonl"
        self.sent_path = folder / f"{name}.sent"
        self.records = read_records(self.path)
        self.seq = self.records[-1]["seq"] if self.records else 0
        self._whole = False  # whether this process appended a line yet (before it, the file may end torn)
        self.write_error: str | None = None

    def append(self, record: dict) -> dict:
        """Give the record the next seq and write its line whole (not fsynced: a step must not wait on the disk).
        A full disk raises DiskFull, the line cut back: the caller must not send the record, since MLflow would
        hold a point the journal does not, and a resumed run would log it again. Another write error is noted in
        `write_error`; the record is returned all the same, for sending."""
        self.seq += 1
        record = {"seq": self.seq, **record}
        line = json.dumps(record) + "\n"
        try:
            if not self._whole:
                self.folder.mkdir(parents=True, exist_ok=True)
                line = ("\n" if self._ends_torn() else "") + line  # a line a crash tore: this one must not join it
            append(self.path, line.encode())
            self._whole = True
        except DiskFull:
            self.seq -= 1
            raise
        except OSError as err:
            self.write_error = err.strerror or str(err)
        return record

    def _ends_torn(self) -> bool:
        if not self.path.is_file() or not self.path.stat().st_size:
            return False
        with open(self.path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            return f.read(1) != b"\n"

    def sent(self) -> int:
        try:
            return int(self.sent_path.read_text())
        except (OSError, ValueError):
            return 0

    def mark_sent(self, seq: int) -> None:
        """Advance the mark (never back: `odyssey sync` may have sent further than a writer that is behind)."""
        if seq <= self.sent():
            return
        write_atomic(self.sent_path, str(seq))

    def unsent(self) -> list[dict]:
        done = self.sent()
        return [r for r in self.records if r["seq"] > done]

    def logged_after(self, run: str, step: int) -> set[tuple[str, int]]:
        """(key, step) of the run's metrics past `step`: a resumed run replays those steps and must not log them
        twice. `run` is a journal key or an MLflow id; records under any key of the same run count."""
        with self._runs_locked() as runs:
            real = runs.get(run, run)
            same = {run, real} | {k for k, v in runs.items() if v == real}
        return {(k, r["step"]) for r in self.records
                if r["op"] == "metrics" and r["run"] in same and r["step"] > step for k in r["metrics"]}

    def unended(self) -> list[str]:
        """Keys of runs this journal created that never recorded an end: attempts that crashed or were killed."""
        with self._runs_locked() as runs:
            created = [r["run"] for r in self.records if r["op"] == "create"]
            ended = {runs.get(r["run"], r["run"]) for r in self.records if r["op"] == "end"}
            return [k for k in created if runs.get(k, k) not in ended]

    # --- run keys shared by every journal of the run folder (training, odyssey eval)
    @contextmanager
    def _runs_locked(self):
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / "runs.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            path = self.folder / "runs.json"
            runs = json.loads(path.read_text()) if path.is_file() else {}
            before = dict(runs)
            yield runs
            if runs != before:
                write_atomic(path, json.dumps(runs, indent=1))

    def run_id(self, key: str | None) -> str | None:
        """The MLflow run id of a journal key (a real run id is its own key), or None while it is pending."""
        if key is None or not key.startswith("pending-"):
            return key
        with self._runs_locked() as runs:
            return runs.get(key)

    def set_run_id(self, key: str, run_id: str) -> None:
        with self._runs_locked() as runs:
            runs[key] = run_id
