"""The tracking journal on a real store: an unreachable server never blocks the caller and loses nothing (`odyssey
sync` sends it all later, in order, once), and a resumed run does not log a step's metric twice."""
import socket
import subprocess
import sys
import time

from trainer.tracking import Tracker, sync


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens there once the socket is closed


def test_unreachable_server_then_sync_then_resume_without_duplicates(tmp_path):
    from mlflow import MlflowClient

    run_dir, store = tmp_path / "run", f"sqlite:///{tmp_path}/store.db"
    down = Tracker(run_dir, "exp", enabled=True, uri=f"http://127.0.0.1:{closed_port()}")
    t0 = time.time()
    key = down.start("r1", tags={"who": "test"})
    down.log_params({"optim.lr": "0.001"})
    for step in range(1, 6):
        down.log_metrics({"train/loss": 10.0 - step}, step)
    down.set_tag("note", "x")
    assert key.startswith("pending-") and down.run_id is None
    assert not down.end("FINISHED", wait_s=1)
    assert time.time() - t0 < 30, "an unreachable server must not hold the caller"
    assert len(down.journal.unsent()) == 0 and len(down.journal._read()) == 9  # nothing sent; this process' records

    r = subprocess.run([sys.executable, "-m", "odyssey", "sync", str(run_dir), "--uri", store], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0 and "sent 9 call(s)" in r.stdout, r.stdout + r.stderr
    client = MlflowClient(store)
    [run] = client.search_runs([client.get_experiment_by_name("exp").experiment_id])
    assert run.info.status == "FINISHED" and run.data.params == {"optim.lr": "0.001"}
    assert run.data.tags["note"] == "x" and run.data.tags["who"] == "test"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == [1, 2, 3, 4, 5]
    assert sync(run_dir, store) == (0, 0)

    resumed = Tracker(run_dir, "exp", enabled=True, uri=store)
    # a checkpoint holds the MLflow id once the run exists; the journal's records name it by its pending key
    assert resumed.start("r1", run_id=run.info.run_id, resume_step=3) == run.info.run_id
    for step in (4, 5, 6):  # a resume from step 3 replays 4 and 5
        resumed.log_metrics({"train/loss": 10.0 - step}, step)
    assert resumed.end("FINISHED", wait_s=30)
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert sorted(m.step for m in history) == [1, 2, 3, 4, 5, 6]
