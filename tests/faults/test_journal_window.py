"""A kill in the journal's window: a metrics call has reached MLflow, the process dies before the journal marks it
sent. The next start of the run replays it, and the run must still hold each (metric, step) once, on a store that
does not skip an identical point itself (MLflow's file store; its SQL stores do). The kill is the test's: a child
process whose journal SIGKILLs it instead of writing that one mark."""
import os
import signal
import subprocess
import sys
import textwrap

from tests.dist.helpers import ROOT

CHILD = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from trainer.journal import Journal
    from trainer.tracking import Tracker

    run_dir, uri, kill_at = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    mark = Journal.mark_sent
    def mark_or_die(self, seq):
        if seq == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)  # sent, not marked
        mark(self, seq)
    Journal.mark_sent = mark_or_die
    tracker = Tracker(run_dir, "exp", enabled=True, uri=uri)
    tracker.start("window")
    for step in range(1, 6):
        tracker.log_metrics({"train/loss": 10.0 - step, "train/lr": 0.1}, step, tokens_seen=100 * step)
    tracker.end("FINISHED", wait_s=30)
""")


def test_a_call_sent_but_not_marked_is_not_logged_twice(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    from trainer.journal import read_records
    from trainer.tracking import Tracker

    run_dir, uri = tmp_path / "run", (tmp_path / "store").as_uri()
    env = {**os.environ, "MLFLOW_ALLOW_FILE_STORE": "true", "PYTHONPATH": str(ROOT)}
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    # records: 1 create, 2..6 the steps' metrics, 7 end; die after sending step 3's points
    r = subprocess.run([sys.executable, "-c", CHILD, str(run_dir), uri, "4"], env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == -signal.SIGKILL, r.stderr[-3000:]
    records = read_records(run_dir / "mlflow" / "train.jsonl")
    assert records[3]["op"] == "metrics" and records[3]["step"] == 3
    assert (run_dir / "mlflow" / "train.sent").read_text() == "3"
    client = MlflowClient(uri)
    [run] = client.search_runs([client.get_experiment_by_name("exp").experiment_id])
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == [1, 2, 3]

    again = Tracker(run_dir, "exp", enabled=True, uri=uri)  # the next start of the run replays 4..7
    again.start("window", run_id=run.info.run_id)
    assert again.end("FINISHED", wait_s=30)
    for key in ("train/loss", "train/lr", "train/tokens_seen"):
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, key))
        assert steps == [1, 2, 3, 4, 5], (key, steps)
