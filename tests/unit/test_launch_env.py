"""Launch plumbing that needs no daemon: hostfiles, the master address check, SLURM ids → torch.distributed env."""
import subprocess
import sys

import pytest

from launch.hostfile import DEFAULT_PORT, LaunchError, hostfile_text, master_addr, master_port
from trainer.dist import launched_rank, slurm_rank_env


def test_hostfile_and_master_addr():
    assert hostfile_text(["a", "b"], 8) == "a slots=8\nb slots=8\n"
    with pytest.raises(LaunchError, match="listed twice"):
        hostfile_text(["a", "a"], 1)
    with pytest.raises(LaunchError, match="at least 1"):
        hostfile_text(["a"], 0)
    assert master_addr(["127.0.0.1", "127.0.0.2"]) == "127.0.0.1"  # all-loopback: one machine, fine
    with pytest.raises(LaunchError, match="loopback"):
        master_addr(["localhost", "10.1.2.3"])  # a head that resolves to loopback with remote workers: refused
    with pytest.raises(LaunchError, match="does not resolve"):
        master_addr(["no-such-host.invalid"])


def test_hostfile_cli_errors_in_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "launch.hostfile", "--hosts", "localhost,10.1.2.3", "--out",
                        str(tmp_path / "h")], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "loopback" in r.stderr
    assert not (tmp_path / "h").exists()
    r = subprocess.run([sys.executable, "-m", "launch.hostfile", "--hosts", "127.0.0.1,127.0.0.2", "--slots", "2",
                        "--out", str(tmp_path / "h")], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "MASTER_ADDR=127.0.0.1"
    assert (tmp_path / "h").read_text() == "127.0.0.1 slots=2\n127.0.0.2 slots=2\n"


def test_slurm_ids_become_rank_env():
    step = {"SLURM_PROCID": "9", "SLURM_LOCALID": "1", "SLURM_STEP_NUM_TASKS": "12", "SLURM_NODEID": "2",
            "SLURM_STEP_TASKS_PER_NODE": "4(x2),4", "SLURM_JOB_ID": "123456", "MASTER_ADDR": "10.0.0.1"}
    env = slurm_rank_env(step)
    assert env == {"RANK": "9", "LOCAL_RANK": "1", "WORLD_SIZE": "12", "LOCAL_WORLD_SIZE": "4",
                   "MASTER_PORT": str(master_port("123456"))}
    uneven = {**step, "SLURM_STEP_TASKS_PER_NODE": "3,2(x2)", "SLURM_NODEID": "0"}
    assert slurm_rank_env(uneven)["LOCAL_WORLD_SIZE"] == "3"
    # a launcher already set RANK, or this is the batch script / an salloc shell (no step): leave it alone
    assert slurm_rank_env({**step, "RANK": "0"}) == {}
    assert slurm_rank_env({k: v for k, v in step.items() if k != "SLURM_STEP_NUM_TASKS"}) == {}
    assert master_port("123456") == 20000 + 123456 % 20000


def test_one_port_rule_for_python_and_the_scripts():
    """The scripts ask launch.hostfile for the port, so the shell and the Python side cannot drift apart."""
    env = {k: v for k, v in __import__("os").environ.items() if k != "MASTER_PORT"}
    ask = [sys.executable, "-m", "launch.hostfile", "--master-port"]
    r = subprocess.run(ask + ["--from-slurm"], env={**env, "SLURM_JOB_ID": "123456"}, capture_output=True, text=True)
    assert r.returncode == 0 and int(r.stdout) == master_port("123456") == 20000 + 123456 % 20000
    r = subprocess.run(ask + ["--hosts", "a,b"], env=env, capture_output=True, text=True)
    assert r.returncode == 0 and int(r.stdout) == master_port() == DEFAULT_PORT == 29500
    r = subprocess.run(ask + ["--hosts", "a"], env={**env, "MASTER_PORT": "31337"}, capture_output=True, text=True)
    assert int(r.stdout) == 31337  # the user's choice wins
    assert master_port("study-a") == master_port("study-a") != master_port("study-b")  # stable across processes
    assert 20000 <= master_port("study-a") < 40000


def test_launched_rank():
    assert not launched_rank({})
    assert launched_rank({"RANK": "0"})  # deepspeed, torchrun
    assert launched_rank({"SLURM_PROCID": "3", "SLURM_STEP_NUM_TASKS": "8"})  # an srun step
    assert not launched_rank({"SLURM_PROCID": "0", "SLURM_JOB_ID": "7"})  # the batch script or an salloc shell
