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
        self._file = None
        self.write_error: str | None = None

    def append(self, record: dict) -> dict:
        """Give the record the next seq and write it (flushed, not fsynced: a step must not wait on the disk). A
        write that fails (a full disk) is noted in `write_error`; the record is returned all the same, for sending."""
        self.seq += 1
        record = {"seq": self.seq, **record}
        try:
            if self._file is None:
                self._file = self._open()
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()
        except OSError as err:
            self.write_error = err.strerror or str(err)
            self._close()  # the next write starts on a line of its own
        return record

    def _open(self):
        self.folder.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a")
        if f.tell() and not self.path.read_bytes().endswith(b"\n"):
            f.write("\n")  # a line torn by a crash or a full disk: the next record must not join it
        return f

    def _close(self) -> None:
        try:
            if self._file is not None:
                self._file.close()
        except OSError:
            pass
        self._file = None

    def sent(self) -> int:
        try:
            return int(self.sent_path.read_text())
        except (OSError, ValueError):
            return 0

    def mark_sent(self, seq: int) -> None:
        """Advance the mark (never back: `odyssey sync` may have sent further than a writer that is behind)."""
        if seq <= self.sent():
            return
        tmp = self.sent_path.with_name(self.sent_path.name + ".tmp")
        tmp.write_text(str(seq))
        tmp.replace(self.sent_path)

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
                tmp = path.with_name("runs.json.tmp")
                tmp.write_text(json.dumps(runs, indent=1))
                os.replace(tmp, path)

    def run_id(self, key: str | None) -> str | None:
        """The MLflow run id of a journal key (a real run id is its own key), or None while it is pending."""
        if key is None or not key.startswith("pending-"):
            return key
        with self._runs_locked() as runs:
            return runs.get(key)

    def set_run_id(self, key: str, run_id: str) -> None:
        with self._runs_locked() as runs:
            runs[key] = run_id
