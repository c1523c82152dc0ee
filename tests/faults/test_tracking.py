"""Tracking that never stops training, against a real `mlflow server` on loopback: stopped mid-run for several steps
and started again, the run completes and MLflow holds every metric point of an outage-free run; a run started while
the server is down completes and `odyssey sync` sends it all afterwards; a run that dies of an exception is FAILED."""
import subprocess
import sys
import threading

import pytest

from tests.dist.helpers import ROOT, MlflowServer, free_port, run_wrapped, wrapped

pytestmark = pytest.mark.slow
STEPS = 60


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = MlflowServer(tmp_path_factory.mktemp("mlflow_server"))
    s.start()
    yield s
    if s.proc.poll() is None:
        s.stop()


@pytest.fixture(scope="module")
def setup(assets, server, tmp_path_factory):
    """The config (1 rank, every step logged, a slowed step) and the outage-free reference run."""
    out = tmp_path_factory.mktemp("outage")
    cfg = out / "train.yaml"
    cfg.write_text(f"""
model: {{path: {assets['model']}}}
data: {{streams: [{{name: prose, path: {assets['domains'] / 'prose'}}}], micro_batch: 2}}
run: {{out_dir: {out}, name: reference, max_steps: {STEPS}}}
eval: {{interval: 20, max_samples: 4}}
checkpoint: {{interval: 0}}
tracking: {{experiment: outage, wait_s: 3}}
""")
    env = {"MLFLOW_TRACKING_URI": server.uri, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
    run_wrapped(cfg, nproc=1, env=env)
    return cfg, out, env


def mlflow_run(server, name):
    from mlflow import MlflowClient

    client = MlflowClient(server.uri)
    [run] = client.search_runs([client.get_experiment_by_name("outage").experiment_id], f"run_name = '{name}'")
    return client, run


def points(client, run):
    return {key: sorted(m.step for m in client.get_metric_history(run.info.run_id, key)) for key in run.data.metrics}


def artifacts(client, run):
    return sorted(a.path for folder in client.list_artifacts(run.info.run_id) if folder.is_dir
                  for a in client.list_artifacts(run.info.run_id, folder.path))


def test_server_down_for_several_steps_loses_no_metric_point(server, setup):
    cfg, out, env = setup
    c, full_env = wrapped(cfg, "run.name=outage", nproc=1, env={**env, "TEST_STEP_SLEEP": "0.4"})  # 24 s of steps
    p = subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=full_env, cwd=ROOT)
    lines, restart = [], threading.Thread(target=server.start)  # the server takes 5-15 s to come back
    for line in p.stdout:
        lines.append(line)
        if f"step 3/{STEPS} loss" in line:
            server.stop()
        if f"step 8/{STEPS} loss" in line:
            restart.start()
    assert p.wait(timeout=300) == 0, "".join(lines)[-4000:]
    restart.join()
    text = "".join(lines)
    back = text.find("reachable again")
    assert text.find("unreachable") < back < text.find(f"step {STEPS}/{STEPS}"), text[-4000:]  # back mid-run
    outage_steps = text[text.find("unreachable"):back].count(f"/{STEPS} loss")
    ref_client, ref = mlflow_run(server, "reference")
    client, run = mlflow_run(server, "outage")
    expected = points(ref_client, ref)
    assert len(expected) > 10 and points(client, run) == expected  # every key, every step, once
    assert sum(len(v) for v in expected.values()) > 100
    assert artifacts(client, run) == artifacts(ref_client, ref)
    assert run.info.status == "FINISHED"
    print(f"outage: {outage_steps} steps; {sum(len(v) for v in expected.values())} metric points in both runs")


def test_run_started_while_the_server_is_down_is_sent_by_sync(server, setup):
    cfg, out, env = setup
    down = f"http://127.0.0.1:{free_port()}"  # no server there: the job starts, trains and ends without one
    r = run_wrapped(cfg, "run.name=offline", nproc=1, env={**env, "MLFLOW_TRACKING_URI": down})
    assert "odyssey sync" in r.stdout, r.stdout[-3000:]
    s = subprocess.run([sys.executable, "-m", "odyssey", "sync", str(out / "offline"), "--uri", server.uri],
                       capture_output=True, text=True, timeout=300)
    assert s.returncode == 0 and "nothing left" in s.stdout, s.stdout + s.stderr
    ref_client, ref = mlflow_run(server, "reference")
    client, run = mlflow_run(server, "offline")
    assert points(client, run) == points(ref_client, ref) and run.info.status == "FINISHED"
    assert run.data.params == ref.data.params | {"run.name": "offline"}


def test_a_run_that_dies_of_an_exception_is_failed(server, setup):
    cfg, out, env = setup
    r = run_wrapped(cfg, "run.name=crash", nproc=1, env={**env, "TEST_RAISE_AT": "4"}, expect=None)
    assert r.returncode != 0 and "injected crash" in r.stderr
    client, run = mlflow_run(server, "crash")
    assert run.info.status == "FAILED"
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "train/loss")) == [1, 2, 3]
