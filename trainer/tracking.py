"""What a run reports: MLflow from rank 0 only, and console lines from rank 0 (`log`). Other ranks get a Tracker whose methods do nothing, so the loop needs no rank checks.
Metrics are written by a background thread, so a training step never waits for the store (a sqlite write or a server
round trip per step is several percent of a GPU step); `flush()` and `end()` wait for them and raise what failed.

Without MLFLOW_TRACKING_URI the store is embedded: `sqlite:///<run_dir>/mlflow.db`, artifacts in `<run_dir>/mlartifacts`.
"""
from __future__ import annotations

import atexit
import os
import queue
import threading
from pathlib import Path
from typing import Any

from trainer.config import flatten

PARAM_VALUE_MAX = 6000  # MLflow's limit on a param value
PARAM_KEY_MAX = 250
SECRET_WORDS = ("token", "secret", "password", "key", "credential")


def log(rank: int, msg: str) -> None:
    """A console line of the run, from rank 0 only."""
    if rank == 0:
        print(f"[odyssey] {msg}", flush=True)


def default_tracking_uri(run_dir: Path, uri: str | None = None) -> str:
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{run_dir.resolve()}/mlflow.db"


def params_for(config_tree: dict) -> dict[str, str]:
    out = {}
    for k, v in flatten(config_tree).items():
        leaf = k.rsplit(".", 1)[-1].lower()
        value = "***" if any(w in leaf for w in SECRET_WORDS) and leaf != "tokenizer" and v else str(v)
        out[k[:PARAM_KEY_MAX]] = value[:PARAM_VALUE_MAX]
    return out


class Tracker:
    def __init__(self, run_dir: Path, experiment: str, enabled: bool, uri: str | None = None):
        self.enabled = enabled
        self.run_id: str | None = None
        self.run_dir = run_dir
        self.experiment = experiment
        self.uri = default_tracking_uri(run_dir, uri)
        # a sqlite file store keeps its artifacts beside the .db (mlflow's default is ./mlartifacts of the cwd)
        self.artifact_root = Path(self.uri[len("sqlite:///"):]).parent / "mlartifacts" \
            if self.uri.startswith("sqlite:///") else None
        self._metrics: queue.Queue | None = None
        self._error: BaseException | None = None

    def start(self, run_name: str, run_id: str | None = None, tags: dict[str, str] | None = None) -> str | None:
        if not self.enabled:
            return run_id
        # MLflow's usage telemetry would start a thread that calls out from every training job; nodes are offline
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        from mlflow import MlflowClient

        self.client = MlflowClient(self.uri)
        if run_id is None:
            exp = self.client.get_experiment_by_name(self.experiment)
            if exp is None:
                location = self.artifact_root.resolve().as_uri() if self.artifact_root else None
                exp_id = self.client.create_experiment(self.experiment, artifact_location=location)
            else:
                exp_id = exp.experiment_id
            run = self.client.create_run(exp_id, run_name=run_name, tags=tags or {})
            self.run_id = run.info.run_id
        else:
            self.run_id = run_id
            self.client.update_run(run_id, status="RUNNING")
        return self.run_id

    def log_params(self, params: dict[str, str]) -> None:
        if not self.enabled:
            return
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i:i + 100])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if not self.enabled or not metrics:
            return
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        if self._metrics is None:
            self._metrics = queue.Queue()
            threading.Thread(target=self._write_metrics, name="odyssey-mlflow-metrics", daemon=True).start()
            atexit.register(self._metrics.join)  # a process that ends without flush() still writes what it logged
        self._metrics.put([Metric(k, float(v), now, step) for k, v in metrics.items()])

    def _write_metrics(self) -> None:
        while True:
            items = self._metrics.get()
            try:
                for i in range(0, len(items), 1000):
                    self.client.log_batch(self.run_id, metrics=items[i:i + 1000])
            except Exception as err:  # kept for flush(), which raises it in the loop's thread
                self._error = self._error or err
            finally:
                self._metrics.task_done()

    def flush(self) -> None:
        """Wait until every metric logged so far is in the store."""
        if self._metrics is not None:
            self._metrics.join()
        if self._error is not None:
            err, self._error = self._error, None
            raise err

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self.enabled:
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def set_tag(self, key: str, value: Any) -> None:
        if self.enabled:
            self.client.set_tag(self.run_id, key, str(value))

    def end(self, status: str = "FINISHED") -> None:
        if self.enabled and self.run_id:
            self.flush()
            self.client.set_terminated(self.run_id, status=status)
