"""Shared by the multi-process tests: start `odyssey train` with N local ranks, read a run back from MLflow."""
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


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


ROOT = str(Path(__file__).resolve().parents[2])


def wrapped(cfg, *args, nproc=2, env=None) -> tuple[list[str], dict]:
    """(command, environment) of a job whose ranks run under tests/dist/wrap.py, which injects faults or records
    collectives from the test's side (TEST_* variables); one rank runs as a plain process."""
    if nproc == 1:
        c = [sys.executable, "-m", "tests.dist.wrap", str(cfg), *args]
    else:
        # DeepSpeed's per-node launcher, as `deepspeed --num_gpus N` starts it on one node (tests/launch runs the
        # `deepspeed` runner itself): one process importing DeepSpeed fewer
        from trainer.cli import launcher_argv

        c = [sys.executable, "-u", "-m", *launcher_argv("tests.dist.wrap", [str(cfg), *args], nproc, free_port())]
    return c, {**os.environ, "DS_ACCELERATOR": "cpu", "PYTHONPATH": ROOT, **(env or {})}


def rank_env(rank: int, world: int, port: int) -> dict:
    """What torchrun sets for one rank of a one-node job (no launcher process: each rank's exit code is its own)."""
    return {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
            "LOCAL_WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
            "DS_ACCELERATOR": "cpu", "PYTHONPATH": ROOT}


def start_ranks(args: list[str], nproc: int = 2, **popen) -> list[subprocess.Popen]:
    """`python -m odyssey ARGS` as `nproc` ranks of one job. Output goes to files, not pipes: a rank blocked on a
    full pipe nobody reads yet would hold the others in their next collective. Read it back with `wait_ranks`."""
    import tempfile

    port = free_port()
    ranks = []
    for r in range(nproc):
        out, err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
        ranks.append(subprocess.Popen([sys.executable, "-m", "odyssey", *args], stdout=out, stderr=err, text=True,
                                      env=rank_env(r, nproc, port), **popen))
        ranks[-1].files = (out, err)
    return ranks


def wait_ranks(ranks: list[subprocess.Popen], timeout: float = 600) -> list[tuple[int, str, str]]:
    """(exit code, stdout, stderr) of every rank started by `start_ranks`."""
    done = []
    for rank in ranks:
        rank.wait(timeout=timeout)
        texts = []
        for f in rank.files:
            f.seek(0)
            texts.append(f.read())
            f.close()
        done.append((rank.returncode, *texts))
    return done


def run_wrapped(cfg, *args, nproc=2, env=None, expect=0):
    """Like `run`, with every rank under tests/dist/wrap.py."""
    c, full_env = wrapped(cfg, *args, nproc=nproc, env=env)
    r = subprocess.run(c, capture_output=True, text=True, timeout=900, env=full_env, cwd=ROOT)
    assert expect is None or r.returncode == expect, r.stdout[-3000:] + r.stderr[-3000:]
    return r


class MlflowServer:
    """`mlflow server` with its own sqlite store and artifact folder, stopped and started on the same port."""

    def __init__(self, root):
        self.root, self.port, self.proc = root, free_port(), None
        self.uri = f"http://127.0.0.1:{self.port}"

    def start(self):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{self.root}/store.db",
             "--artifacts-destination", str(self.root / "artifacts"), "--host", "127.0.0.1", "--port",
             str(self.port), "--workers", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True, cwd=self.root)
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if urllib.request.urlopen(f"{self.uri}/health", timeout=2).status == 200:
                    return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError("mlflow server did not start")

    def stop(self):
        os.killpg(self.proc.pid, signal.SIGKILL)  # a server that dies, not one that says goodbye
        self.proc.wait(timeout=30)


def mixed_config(assets, path: Path, rest: str, data_extra: str = "") -> Path:
    """A run config at `path` training on prose and code mixed 3:1, micro-batch 2, with `rest` (YAML) after the data
    section and `data_extra` (indented YAML lines) inside it."""
    path.write_text(f"""
model: {{path: {assets['model']}}}
data:
  streams:
    - {{name: prose, path: {assets['domains'] / 'prose'}, proportion: 0.75}}
    - {{name: code, path: {assets['domains'] / 'code'}, proportion: 0.25}}
  micro_batch: 2
{data_extra}{rest}""")
    return path

