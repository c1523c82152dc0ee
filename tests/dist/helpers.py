"""Shared by the multi-process tests: start `odyssey train` with N local ranks, read a run back from MLflow."""
import os
import socket
import subprocess
import sys


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cmd(cfg, *args, nproc=2):
    c = [sys.executable, "-m", "odyssey", "train", str(cfg), *args]
    return c + (["--nproc", str(nproc), "--master-port", str(free_port())] if nproc else [])


def run(cfg, *args, nproc=2, env=None, expect=0):
    r = subprocess.run(cmd(cfg, *args, nproc=nproc), capture_output=True, text=True, timeout=900,
                       env={**os.environ, **(env or {})})
    assert r.returncode == expect, r.stdout[-3000:] + r.stderr[-3000:]
    return r


def client_and_run(run_dir, experiment="test"):
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{run_dir}/mlflow.db")
    return client, client.search_runs([client.get_experiment_by_name(experiment).experiment_id])


def history(client, run_id, key):
    return {m.step: m.value for m in client.get_metric_history(run_id, key)}


def run_wrapped(cfg, *args, env=None, expect=0):
    """Like `run`, but each rank runs under tests/dist/wrap.py, which injects faults or records collectives from the
    test's side (TEST_* variables)."""
    from pathlib import Path

    root = str(Path(__file__).resolve().parents[2])
    launcher = os.path.join(os.path.dirname(sys.executable), "deepspeed")
    c = [launcher, "--num_gpus", "2", "--master_port", str(free_port()), "--module", "tests.dist.wrap", str(cfg), *args]
    full_env = {**os.environ, "DS_ACCELERATOR": "cpu", "PYTHONPATH": root, **(env or {})}
    r = subprocess.run(c, capture_output=True, text=True, timeout=900, env=full_env, cwd=root)
    assert r.returncode == expect, r.stdout[-3000:] + r.stderr[-3000:]
    return r
