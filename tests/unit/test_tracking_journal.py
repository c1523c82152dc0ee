"""The tracking journal on a real store: an unreachable server never blocks the caller and loses nothing (`odyssey
sync` sends it all later, in order, once), and a resumed run does not log a step's metric twice. A torn line, a run
MLflow refuses and a crashed attempt's run do not stop what comes after; a full disk under the journal is one line,
once, and no call goes to MLflow without its journal line."""
import socket
import time

from trainer.journal import read_records
from tests.cli import odyssey
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
    # nothing sent; this process' records
    assert len(down.journal.unsent()) == 0 and len(read_records(down.journal.path)) == 9

    (run_dir / "config.yaml").write_text(f"tracking: {{uri: '{store}'}}\n")  # sync sends to the run's own URI
    r = odyssey(["sync", run_dir])
    assert r.returncode == 0 and f"sent 9 call(s) from {run_dir / 'mlflow'} to {store}" in r.stdout, r.stdout + r.stderr
    client = MlflowClient(store)
    [run] = client.search_runs([client.get_experiment_by_name("exp").experiment_id])
    assert run.info.status == "FINISHED" and run.data.params == {"optim.lr": "0.001"}
    assert run.data.tags["note"] == "x" and run.data.tags["who"] == "test"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == [1, 2, 3, 4, 5]
    assert sync(run_dir, store)[1:] == (0, 0)

    resumed = Tracker(run_dir, "exp", enabled=True, uri=store)
    # a checkpoint holds the MLflow id once the run exists; the journal's records name it by its pending key
    assert resumed.start("r1", run_id=run.info.run_id, resume_step=3) == run.info.run_id
    for step in (4, 5, 6):  # a resume from step 3 replays 4 and 5
        resumed.log_metrics({"train/loss": 10.0 - step}, step)
    assert resumed.end("FINISHED", wait_s=30)
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert sorted(m.step for m in history) == [1, 2, 3, 4, 5, 6]


def runs_by_name(store: str, experiment: str) -> dict:
    from mlflow import MlflowClient

    client = MlflowClient(store)
    return {r.info.run_name: r for r in client.search_runs([client.get_experiment_by_name(experiment).experiment_id])}


def test_a_crashed_attempt_ends_failed_and_a_refused_run_blocks_nothing(tmp_path):
    run_dir, store = tmp_path / "run", f"sqlite:///{tmp_path}/store.db"
    crashed = Tracker(run_dir, "exp", enabled=True, uri=store)
    crashed.start("first")
    crashed.log_metrics({"train/loss": 1.0}, 1)
    assert crashed.flush(timeout=60)  # then the process dies: no end record
    with open(crashed.journal.path, "a") as f:
        f.write('{"seq": 99, "op": "metr')  # and its last line was torn mid-write

    from mlflow import MlflowClient

    client = MlflowClient(store)
    client.delete_experiment(client.create_experiment("deleted"))
    refused = Tracker(run_dir, "deleted", enabled=True, uri=store)
    refused.start("second")  # MLflow refuses a run in a deleted experiment, for good
    refused.log_metrics({"train/loss": 2.0}, 1)
    assert refused.end("FINISHED", wait_s=30), "the calls of a refused run are skipped, not retried forever"
    third = Tracker(run_dir, "exp", enabled=True, uri=store)
    third.start("third")
    third.log_metrics({"train/loss": 3.0}, 1)
    assert third.end("FINISHED", wait_s=30)

    runs = runs_by_name(store, "exp")
    assert sorted(runs) == ["first", "third"]
    assert runs["first"].info.status == "FAILED" and runs["third"].info.status == "FINISHED"
    records = read_records(third.journal.path)
    assert [r["seq"] for r in records] == list(range(1, len(records) + 1))  # the torn line alone was lost


def test_a_full_disk_under_the_journal_is_one_line_and_nothing_unjournaled_is_sent(tmp_path, capsys):
    """A call MLflow took but the journal lost would be logged again by a resumed run: on a full disk the call is
    dropped, the tracker says so once, and `write_problem` holds the line the job stops with (trainer/dist.py)."""
    run_dir, store = tmp_path / "run", f"sqlite:///{tmp_path}/store.db"
    (run_dir / "mlflow").mkdir(parents=True)
    journal = run_dir / "mlflow" / "train.jsonl"
    journal.symlink_to("/dev/full")  # every write: ENOSPC
    tracker = Tracker(run_dir, "exp", enabled=True, uri=store)
    tracker.start("full")
    for step in range(1, 4):
        tracker.log_metrics({"train/loss": float(step)}, step)
    assert tracker.end("FINISHED", wait_s=30)  # nothing queued: nothing waits
    out = capsys.readouterr().out
    assert out.count("tracking: no space left writing") == 1 and f"writing {journal} (" in out, out
    assert tracker.write_problem.startswith(f"no space left writing {journal} (")
    assert tracker.write_problem.endswith("--resume auto continues from the last checkpoint)")
    assert tracker.journal.seq == 0 and tracker.run_id is None  # not even the run was created


def test_a_study_sends_what_its_runs_could_not_before_it_aggregates(tmp_path):
    import pytest

    from study.runs import StudyError, send_journals

    down_uri, store = f"http://127.0.0.1:{closed_port()}", f"sqlite:///{tmp_path}/store.db"
    run_dir = tmp_path / "runs" / "legal"
    down = Tracker(run_dir, "study", enabled=True, uri=down_uri)
    down.start("legal")
    down.log_metrics({"eval/legal/ppl": 12.5}, 4)
    assert not down.end("FINISHED", wait_s=1)
    (run_dir / "config.yaml").write_text(f"tracking: {{uri: '{down_uri}'}}\n")
    with pytest.raises(StudyError, match="legal: 3 MLflow call.s. still unsent"):
        send_journals(tmp_path, ["legal", "code"])  # "code" has no journal at all
    (run_dir / "config.yaml").write_text(f"tracking: {{uri: '{store}'}}\n")  # the server is back
    send_journals(tmp_path, ["legal"])
    run = runs_by_name(store, "study")["legal"]
    assert run.info.status == "FINISHED" and run.data.metrics == {"eval/legal/ppl": 12.5}
