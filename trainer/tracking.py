"""What a run reports to MLflow, from rank 0 only. Other ranks get a Tracker whose methods do nothing, so the loop
needs no rank checks (console lines: data_prep/console.py).

Tracking never stops training. Every call is written to the run's journal (trainer/journal.py) and handed to one
background writer, which sends the calls to MLflow in order. While the server is unreachable the writer keeps
retrying (backing off to 30 s) and the calls wait in the journal; when it is back they are replayed. A call the
server refuses for good (a param changed on resume) is reported and skipped. What is still unsent when the job ends
is replayed by the next start of the run, or by `odyssey sync RUN_DIR`.

A resumed run replays the steps after its checkpoint; metric points it already logged for those steps (the journal
knows them) are not logged twice, so every (metric, step) appears once in MLflow.

Without MLFLOW_TRACKING_URI the store is embedded: `sqlite:///<run_dir>/mlflow.db`, artifacts in `<run_dir>/mlartifacts`.
Credentials in a URI (`https://user:pass@host`) move to MLFLOW_TRACKING_USERNAME/PASSWORD; the URI is shown without them.
A config's URI without credentials takes them from MLFLOW_TRACKING_URI when that names the same server.
"""
from __future__ import annotations

import logging
import os
import queue
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from data_prep.config import ConfigError, read_yaml
from data_prep.console import log
from data_prep.disk import DiskFull, disk_full, is_full
from data_prep.errors import OdysseyError
from data_prep.redact import redact, redact_tree, split_userinfo
from trainer.config import flatten
from trainer.journal import Journal

PARAM_VALUE_MAX = 6000  # MLflow's limit on a param value
PARAM_KEY_MAX = 250
RETRY_MAX_S = 30.0
# refusals that retrying cannot fix: the call is skipped (and reported), the calls after it go on
PERMANENT = {"INVALID_PARAMETER_VALUE", "RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST", "BAD_REQUEST",
             "INVALID_STATE"}


class TrackingError(OdysseyError, RuntimeError):
    """MLflow could not be reached where a caller must wait for it (a study's parent run)."""


class RunPending(LookupError):
    """A call for a run whose create record waits in another journal (a training run created while MLflow was down)."""


class RunRefused(LookupError):
    """A call for a run whose creation MLflow refused for good: skipped like the create itself."""


def default_tracking_uri(run_dir: Path, uri: str | None = None) -> str:
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{run_dir.resolve()}/mlflow.db"


def params_for(config_tree: dict) -> dict[str, str]:
    """MLflow params of a config: secret keys masked, secret values and URI credentials redacted, limits kept."""
    return {k[:PARAM_KEY_MAX]: str(v)[:PARAM_VALUE_MAX] for k, v in flatten(redact_tree(config_tree)).items()}


def _quiet_store_errors(record: logging.LogRecord) -> bool:
    """MLflow's SQL store logs every failed call with its traceback before raising it (a full disk printed tens of
    thousands of lines); the writer reports a failing store itself, once."""
    return record.levelno < logging.ERROR


def local_store(uri: str) -> Path | None:
    """The file of an embedded sqlite store, or the folder of a file store; None for a server."""
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///"):])
    if uri.startswith(("file:", "/", ".")):  # a bare name ("databricks") is a server
        return Path(uri.removeprefix("file://").removeprefix("file:"))
    return None


def _permanent(err: BaseException) -> bool:
    return getattr(err, "error_code", None) in PERMANENT or isinstance(err, (FileNotFoundError, RunRefused))


class Tracker:
    def __init__(self, run_dir: Path, experiment: str, enabled: bool, uri: str | None = None, journal: str = "train"):
        self.enabled = enabled
        self.run_dir = run_dir
        self.experiment = experiment
        self.uri, user, password = split_userinfo(default_tracking_uri(run_dir, uri))
        env_uri, env_user, env_password = split_userinfo(os.environ.get("MLFLOW_TRACKING_URI", ""))
        if not user and env_uri == self.uri:  # a config written without them (a study's child run on SLURM)
            user, password = env_user, env_password
        for name, value in (("MLFLOW_TRACKING_USERNAME", user), ("MLFLOW_TRACKING_PASSWORD", password)):
            if value:
                os.environ.setdefault(name, value)
        # a sqlite file store keeps its artifacts beside the .db (mlflow's default is ./mlartifacts of the cwd)
        self.artifact_root = Path(self.uri[len("sqlite:///"):]).parent / "mlartifacts" \
            if self.uri.startswith("sqlite:///") else None
        self.journal = Journal(run_dir / "mlflow", journal) if enabled else None
        # the journal's name of this run: its MLflow id, or "pending-…" until created
        self.journal_key: str | None = None
        self._queue: queue.Queue = queue.Queue()
        self._down_since: float | None = None
        self._hurry = threading.Event()  # set while end() waits: retry every second instead of backing off
        self._logged: set[tuple[str, int]] = set()
        self._tokens_step: int | None = None  # the last step `train/tokens_seen` went with
        # journal op → the call that sends it: one table, so a reader sees every op the journal can hold
        self._senders = {"create": self._create, "resume": self._resume, "params": self._params,
                         "metrics": self._metrics, "artifact": self._artifact, "tag": self._tag, "end": self._end}
        self._client = None
        self.store = local_store(self.uri)
        # a write of this job's tracking (journal, local store) that met a full disk: DiskFull's line, reported once
        # here and by the job at its next eval or save (trainer/dist.py: stop_together)
        self.write_problem: str | None = None
        self._store_full = False
        self.attached = False  # logging into a run someone else opened and ends (start with reopen=False)
        # the first record past the journal's sent mark may have reached MLflow before a crash kept it from being
        # marked: its metric points are checked against the run's history before they are sent again
        self._in_doubt = self.journal.sent() + 1 if self.journal else None

    @property
    def run_id(self) -> str | None:
        """The MLflow run id (None while the run waits to be created on an unreachable server)."""
        return self.journal.run_id(self.journal_key) if self.enabled else None

    @property
    def client(self):
        if self._client is None:
            os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # no usage pings from offline training nodes
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")  # the writer retries, with no cap
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
            from mlflow import MlflowClient

            logging.getLogger("mlflow.store.db.utils").addFilter(_quiet_store_errors)
            self._client = MlflowClient(self.uri)
        return self._client

    def start(self, run_name: str, run_id: str | None = None, tags: dict[str, str] | None = None,
              resume_step: int | None = None, wait: bool = False, reopen: bool = True) -> str | None:
        """Open the run: a new one (run_id None) or `run_id` again (a journal key or an MLflow id; `reopen` False
        logs into it without marking it RUNNING). With `resume_step`, metric points the journal holds past that step
        are not logged again. With `wait`, the run is created now or a one-line TrackingError says why (callers that
        need its id at once). A new run first ends, as FAILED, the runs this journal created that never ended
        (attempts that crashed or were killed). Returns the key."""
        if not self.enabled:
            return run_id
        abandoned = self.journal.unended() if run_id is None else []
        if run_id is None and wait:
            run_id = self._create_now(run_name, tags or {})
        replay = self.journal.unsent()
        threading.Thread(target=self._write, name="odyssey-mlflow", daemon=True).start()
        for old in replay:  # calls an earlier attempt could not send, first and in order
            self._queue.put(old)
        for key in abandoned:
            self._put({"op": "end", "run": key, "status": "FAILED"})
        if run_id is None:
            self.journal_key = f"pending-{uuid.uuid4().hex[:12]}"
            self._put({"op": "create", "run": self.journal_key, "name": run_name, "experiment": self.experiment,
                       "tags": {k: redact(str(v)) for k, v in (tags or {}).items()}})
        else:
            self.journal_key = run_id
            if reopen:
                self._put({"op": "resume", "run": run_id})
            else:
                self.attached = True
        if resume_step is not None:
            self._logged = self.journal.logged_after(self.journal_key, resume_step)
        return self.journal_key

    def _create_now(self, run_name: str, tags: dict[str, str]) -> str:
        record = {"run": None, "name": run_name, "experiment": self.experiment,
                  "tags": {k: redact(str(v)) for k, v in tags.items()}}
        try:
            return self._create(record)
        except Exception as err:
            raise TrackingError(f"MLflow at {self.uri} did not create run '{run_name}': "
                                f"{redact(str(err)).splitlines()[0][:300]}") from None

    def _note_full(self, line: str) -> None:
        if self.write_problem is None:
            self.write_problem = line
            log(f"tracking: {line.split('; ')[0]}; the job stops at its next eval or save")

    def _put(self, record: dict) -> None:
        """Journal the call, then queue it for the writer. On a full disk the call is dropped (never sent without
        its journal line) and the job stops at its next eval or save: those steps run again on resume."""
        noted = self.journal.write_error
        try:
            record = self.journal.append(record)
        except DiskFull as err:
            self._note_full(str(err))
            return
        self._queue.put(record)
        if self.journal.write_error and not noted:
            log(f"cannot write the MLflow journal {self.journal.path} ({self.journal.write_error}); calls go "
                f"to MLflow from memory, and those still unsent when the job ends are lost")

    def log_params(self, params: dict[str, str]) -> None:
        if self.enabled:
            self._put({"op": "params", "run": self.journal_key, "params": params})

    def log_metrics(self, metrics: dict[str, float], step: int, tokens_seen: int | None = None) -> None:
        """With `tokens_seen`, `train/tokens_seen` goes with the step's metrics, once per step (training and eval
        metrics of one step both pass it), so any curve can be drawn against tokens."""
        if tokens_seen is not None and step != self._tokens_step:
            metrics, self._tokens_step = {**metrics, "train/tokens_seen": tokens_seen}, step
        if not self.enabled or not metrics:
            return
        fresh = {k: float(v) for k, v in metrics.items() if (k, step) not in self._logged}
        if fresh:
            self._put({"op": "metrics", "run": self.journal_key, "step": step, "time": int(time.time() * 1000),
                       "metrics": fresh})

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self.enabled:
            self._put({"op": "artifact", "run": self.journal_key, "path": str(Path(path).resolve()),
                       "artifact_path": artifact_path})

    def set_tag(self, key: str, value: Any) -> None:
        if self.enabled:
            self._put({"op": "tag", "run": self.journal_key, "key": key, "value": redact(str(value))})

    # --- waiting
    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every call so far reached MLflow; stop waiting while the server is unreachable, or after
        `timeout` seconds. Returns whether everything was sent."""
        deadline = None if timeout is None else time.time() + timeout
        while self.enabled and self._queue.unfinished_tasks:
            if self._down_since is not None or (deadline is not None and time.time() > deadline):
                return False
            time.sleep(0.05)
        return True

    def end(self, status: str = "FINISHED", wait_s: float = 60.0) -> bool:
        """Close the run with `status` (FINISHED, FAILED, KILLED), then `drain`. Returns whether all was sent."""
        if not self.enabled or self.journal_key is None:
            return True
        self._put({"op": "end", "run": self.journal_key, "status": status})
        return self.drain(wait_s)

    def close(self, wait_s: float = 60.0, error: BaseException | None = None) -> bool:
        """At the end of a process: end the run it opened (FINISHED; FAILED on `error`, KILLED on Ctrl-C), or only
        `drain` into a run it attached to."""
        if self.attached:
            return self.drain(wait_s)
        status = "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED" if error else "FINISHED"
        return self.end(status, wait_s)

    def drain(self, wait_s: float = 60.0) -> bool:
        """Before the process exits: wait up to `wait_s` for an unreachable server (not for a local store on a full
        disk, which does not empty itself), then leave the rest in the journal and say how to send it. Returns
        whether everything was sent."""
        if not self.enabled or self.journal_key is None:
            return True
        self._hurry.set()
        deadline = time.time() + wait_s
        while not self.flush(timeout=max(0.0, deadline - time.time())) and time.time() < deadline \
                and not self._store_full:
            time.sleep(0.5)
        left = self._queue.unfinished_tasks
        if left:
            why = "has no room" if self._store_full else "unreachable"
            log(f"MLflow at {self.uri} {why}: {left} call(s) kept in {self.journal.path}; they are sent by "
                f"the next start of this run, or now with: odyssey sync {self.run_dir}")
        return not left

    # --- the writer thread
    def _write(self) -> None:
        while True:
            record = self._queue.get()
            delay = 1.0
            while not self._send(record):
                self._hurry.wait(delay)
                delay = 1.0 if self._hurry.is_set() else min(2 * delay, RETRY_MAX_S)
            if self._down_since is not None:
                log(f"MLflow at {self.uri} reachable again after {time.time() - self._down_since:.0f}s; "
                    f"replaying the journal")
                self._down_since = None
            try:
                self.journal.mark_sent(record["seq"])
            except DiskFull as err:  # the record is sent; a resumed run checks it against the run's history
                self._note_full(str(err))
            except OSError as err:  # the record is sent; a later mark or `odyssey sync` moves past it
                log(f"could not mark MLflow call #{record['seq']} sent ({err.strerror})")
            finally:
                self._queue.task_done()

    def _send(self, record: dict) -> bool:
        """One journal record to MLflow: True when done (or refused for good), False to retry later."""
        send = self._senders.get(record["op"])
        if send is None:  # a journal written by a newer Odyssey
            log(f"MLflow call #{record['seq']}: unknown op {record['op']!r}; skipped")
            return True
        try:
            send(record)
            return True
        except Exception as err:  # the writer must survive anything the store raises
            why = redact(str(err)).splitlines()[0][:300] if str(err) else type(err).__name__
            if isinstance(err, RunPending):
                return False  # its run's create waits in another journal (a training run still pending)
            if self._full(record, err):
                return False  # kept in the journal; the job stops at its next eval or save
            if _permanent(err):
                log(f"MLflow refused {record['op']} #{record['seq']} ({why}); skipped")
                if record["op"] == "create" and record["run"]:
                    self.journal.set_run_id(record["run"], "")  # the calls for this run are skipped too
                return True
            if self._down_since is None:
                self._down_since = time.time()
                log(f"MLflow at {self.uri} unreachable ({why}); nothing waits for it: calls are kept in "
                    f"{self.journal.path} and sent when it is back")
            return False

    def _full(self, record: dict, err: BaseException) -> bool:
        """A write of ours that met a full disk: the journal's run table, or a local store (sqlite, its artifacts).
        Noted once; the writer waits for space like for a server that is down, without a line per call."""
        if isinstance(err, DiskFull):
            line = str(err)
        elif self.store is not None and is_full(err):
            where = self.artifact_root if record["op"] == "artifact" and self.artifact_root else self.store
            line = str(disk_full(getattr(err, "filename", None) or where, err))
        else:
            return False
        self._note_full(line)
        self._store_full = True
        self._down_since = self._down_since or time.time()
        return True

    def _id(self, record: dict) -> str:
        run_id = self.journal.run_id(record["run"])
        if run_id is None:
            raise RunPending(record["run"])  # retried until its create record is sent
        if not run_id:
            raise RunRefused(f"MLflow refused to create run {record['run']}")
        return run_id

    def _create(self, record: dict) -> str:
        known = self.journal.run_id(record["run"]) if record["run"] else None
        if known:
            return known  # created before a crash that came before its .sent mark
        client = self.client
        exp = client.get_experiment_by_name(record["experiment"])
        if exp is None:
            location = self.artifact_root.resolve().as_uri() if self.artifact_root else None
            exp_id = client.create_experiment(record["experiment"], artifact_location=location)
        else:
            exp_id = exp.experiment_id
        run_id = client.create_run(exp_id, run_name=record["name"], tags=record["tags"]).info.run_id
        if record["run"]:
            self.journal.set_run_id(record["run"], run_id)
        return run_id

    def _resume(self, record: dict) -> None:
        self.client.update_run(self._id(record), status="RUNNING")

    def _params(self, record: dict) -> None:
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in record["params"].items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self._id(record), params=items[i:i + 100])

    def _metrics(self, record: dict) -> None:
        from mlflow.entities import Metric

        items = [Metric(k, v, record["time"], record["step"]) for k, v in record["metrics"].items()]
        if record["seq"] == self._in_doubt or self.attached:
            items = self._not_logged(self._id(record), items)
        for i in range(0, len(items), 1000):
            self.client.log_batch(self._id(record), metrics=items[i:i + 1000])

    def _not_logged(self, run_id: str, items: list) -> list:
        """The points whose (metric, step) the run does not hold yet. For a record that may have been sent already
        (`_in_doubt`: MLflow's SQL stores skip an identical point, its file store and some servers add it again),
        and for a tracker attached to another process's run (`odyssey eval --watch` scoring a checkpoint the
        trainer evaluated itself: the trainer's point stays, sent minutes before)."""
        held = set()
        for key in {m.key for m in items}:
            held |= {(m.key, m.step) for m in self.client.get_metric_history(run_id, key)}
        return [m for m in items if (m.key, m.step) not in held]

    def _artifact(self, record: dict) -> None:
        if not Path(record["path"]).exists():
            raise FileNotFoundError(record["path"])
        self.client.log_artifact(self._id(record), record["path"], record["artifact_path"])

    def _tag(self, record: dict) -> None:
        self.client.set_tag(self._id(record), record["key"], record["value"])

    def _end(self, record: dict) -> None:
        self.client.set_terminated(self._id(record), status=record["status"])


def run_tracking_uri(run_dir: Path) -> str | None:
    """The tracking URI a run folder's config.yaml names (without credentials: those come from the environment)."""
    try:
        tree = read_yaml(run_dir / "config.yaml")
    except ConfigError:
        return None
    return (tree.get("tracking") or {}).get("uri")


def sync(run_dir: Path, uri: str | None = None) -> tuple[str, int, int]:
    """`odyssey sync RUN_DIR`: send what every journal of the run folder still holds, to `uri`, else the run's own
    tracking URI, else MLFLOW_TRACKING_URI or the run's embedded store. A journal that waits on a run another
    journal creates goes on in the next pass. Returns (the URI, calls sent, calls left)."""
    uri = uri or run_tracking_uri(run_dir)
    trackers = [Tracker(run_dir, "", enabled=True, uri=uri, journal=path.stem)
                for path in sorted((run_dir / "mlflow").glob("*.jsonl"))]
    sent, progress = 0, True
    while progress:
        progress = False
        for tracker in trackers:
            for record in tracker.journal.unsent():
                if not tracker._send(record):
                    break
                tracker.journal.mark_sent(record["seq"])
                sent, progress = sent + 1, True
    left = sum(len(t.journal.unsent()) for t in trackers)
    return split_userinfo(default_tracking_uri(run_dir, uri))[0], sent, left
