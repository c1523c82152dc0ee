"""Launch plumbing that needs no daemon: hostfiles, the master address check, SLURM ids → torch.distributed env."""
import subprocess
import sys

import pytest

from launch.hostfile import LaunchError, hostfile_text, master_addr
from trainer.engine import slurm_master_port, slurm_rank_env


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
                   "MASTER_PORT": str(slurm_master_port("123456"))}
    uneven = {**step, "SLURM_STEP_TASKS_PER_NODE": "3,2(x2)", "SLURM_NODEID": "0"}
    assert slurm_rank_env(uneven)["LOCAL_WORLD_SIZE"] == "3"
    # a launcher already set RANK, or this is the batch script / an salloc shell (no step): leave it alone
    assert slurm_rank_env({**step, "RANK": "0"}) == {}
    assert slurm_rank_env({k: v for k, v in step.items() if k != "SLURM_STEP_NUM_TASKS"}) == {}
    assert slurm_master_port("123456") == 20000 + 123456 % 20000
