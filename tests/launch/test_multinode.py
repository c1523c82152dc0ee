"""The deepspeed multi-node launcher for real: sshd on 127.0.0.1 and 127.0.0.2 as two nodes, pdsh over ssh, one
ZeRO-3 rank per node, started by the shipped launch/deepspeed_multinode.sh; secrets in its environment reach no log,
file or MLflow record."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import launch
from tests.dist.helpers import MlflowServer, free_port, history
from tests.launch.cluster import SshNodes

pytestmark = pytest.mark.slow
SCRIPT = str(launch.script("deepspeed_multinode.sh"))


def config(assets, out, name, steps):
    cfg = out / f"{name}.yaml"
    cfg.write_text(f"""
model: {{path: {assets['model']}}}
data: {{streams: [{{name: prose, path: {assets['domains'] / 'prose'}}}], micro_batch: 2}}
optim: {{lr: 3.0e-3, warmup_steps: 1}}
run: {{out_dir: {out}, name: {name}, max_steps: {steps}, seed: 1}}
eval: {{interval: 2, max_samples: 8, domains: [{{name: code, path: {assets['domains'] / 'code'}}}]}}
checkpoint: {{interval: 2}}
tracking: {{experiment: test}}
""")
    return cfg


def launch(ssh_nodes, cfg, tmp_path, env=None, **popen):
    env = {**ssh_nodes.env, "HOSTS": ",".join(SshNodes.HOSTS), "SLOTS": "1", "MASTER_PORT": str(free_port()),
           "LAUNCH_DIR": str(tmp_path / f"launch-{cfg.stem}"), "PYTHON": sys.executable, "DS_ACCELERATOR": "cpu",
           **(env or {})}
    return subprocess.Popen(["bash", SCRIPT, str(cfg)], env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True, **popen)


SECRETS = {"AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY", "HF_TOKEN": "hf_QzXv81secret0token",
           "MLFLOW_TRACKING_PASSWORD": "mlflow-pw-4242", "MY_API_TOKEN": "forwarded-secret-77"}
URI_PASSWORD = "uri-pass-9191"


def files_holding(root, values) -> list[str]:
    return [f"{path}: {v}" for path in root.rglob("*") if path.is_file()
            for v in values if v.encode() in path.read_bytes()]


def test_two_nodes_train_zero3_and_no_secret_reaches_a_log_a_file_or_mlflow(assets, ssh_nodes, tmp_path):
    from mlflow import MlflowClient

    server = MlflowServer(tmp_path / "server")
    (tmp_path / "server").mkdir()
    server.start()
    try:
        cfg = config(assets, tmp_path, "twonode", 4)
        cfg.write_text(cfg.read_text().replace("tracking: {experiment: test}", "tracking: {experiment: test, tags: "
                                               f"{{source: 'https://bob:{URI_PASSWORD}@data.example/x'}}}}"))
        env = {**SECRETS, "FORWARD_ENV": "MY_API_TOKEN",
               "MLFLOW_TRACKING_URI": f"http://bob:{URI_PASSWORD}@127.0.0.1:{server.port}"}
        p = launch(ssh_nodes, cfg, tmp_path, env=env)
        out, _ = p.communicate(timeout=900)
        assert p.returncode == 0, out[-4000:]
        client = MlflowClient(server.uri)
        [run] = client.search_runs([client.get_experiment_by_name("test").experiment_id])
        arts = client.download_artifacts(run.info.run_id, "", str(tmp_path / "artifacts"))
        assert sorted(history(client, run.info.run_id, "eval/code/ppl")) == [0, 2, 4]
    finally:
        server.stop()
    # pdsh prefixes each line with the node it came from: both nodes ran a rank of the same world
    assert re.search(r"^127\.0\.0\.1: \[odyssey\] rank 0/2 ", out, re.M), out[-4000:]
    assert re.search(r"^127\.0\.0\.2: \[odyssey\] rank 1/2 ", out, re.M), out[-4000:]
    assert "127.0.0.1: [odyssey] done: 4 steps" in out
    assert run.info.status == "FINISHED" and run.data.params["derived.world_size"] == "2"

    values = [*SECRETS.values(), URI_PASSWORD]
    assert [v for v in values if v in out] == [], "stdout"
    assert files_holding(tmp_path / "launch-twonode", values) == []  # launch.log
    assert files_holding(tmp_path / "twonode", values) == []  # the run folder: config.yaml, journal, checkpoints
    assert files_holding(Path(arts), values) == []
    mlflow_text = json.dumps([run.data.params, run.data.tags])
    assert [v for v in values if v in mlflow_text] == [] and "https://***@data.example/x" in mlflow_text
    assert sorted(p.name for p in (tmp_path / "launch-twonode").iterdir()) == ["hostfile", "launch.log"]


def test_a_killed_rank_fails_the_whole_launch(assets, ssh_nodes, tmp_path):
    p = launch(ssh_nodes, config(assets, tmp_path, "killed", 100000), tmp_path)
    lines, victim = [], None
    try:
        for line in p.stdout:
            lines.append(line)
            m = re.match(r"127\.0\.0\.2: \[odyssey\] rank 1/2 .* pid (\d+),", line)
            if m:
                victim = int(m.group(1))
            if "[odyssey] step 3/" in line:
                break
        assert victim, "".join(lines[-50:])
        os.kill(victim, signal.SIGKILL)  # the rank on node 127.0.0.2 dies
        t0 = time.time()
        rest, _ = p.communicate(timeout=300)
        elapsed = time.time() - t0
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    assert p.returncode != 0, rest[-3000:]
    assert "the launch failed" in rest, rest[-3000:]
    print(f"launch exited {p.returncode} {elapsed:.1f}s after the kill")


def test_a_host_without_ssh_is_refused_before_anything_starts(assets, ssh_nodes, tmp_path):
    cfg = config(assets, tmp_path, "nohost", 2)
    env = {**ssh_nodes.env, "HOSTS": "127.0.0.1,127.0.0.3", "MASTER_PORT": str(free_port()),
           "LAUNCH_DIR": str(tmp_path / "l"), "PYTHON": sys.executable}
    r = subprocess.run(["bash", SCRIPT, str(cfg)], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "host 127.0.0.3: no passwordless ssh login" in r.stderr, r.stderr
    assert not (tmp_path / "nohost").exists()
