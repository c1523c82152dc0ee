"""Real daemons for the launch tests, started on this machine and stopped by pid afterwards: a one-node SLURM
(munged + slurmctld + slurmd from Debian's slurm-wlm) and an sshd answering on 127.0.0.1 and 127.0.0.2, the two
"nodes" of a multi-node deepspeed launch over pdsh. Nothing outside the temp folder is touched (the system's munge
key, ~/.ssh and /etc/slurm stay as they were).

    python -m tests.launch.cluster slurm /tmp/sl   # start one by hand and keep it (prints the SLURM_CONF to export)
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

SLURM_PROGRAMS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel", "srun")
SSH_PROGRAMS = ("sshd", "ssh", "ssh-keygen", "pdsh", "unshare")


def which(name: str) -> str | None:
    return shutil.which(name) or next((p for d in ("/usr/sbin", "/sbin") if os.access(p := f"{d}/{name}", os.X_OK)),
                                      None)


def missing(programs) -> list[str]:
    return [p for p in programs if which(p) is None]


def cannot_run_daemons(programs) -> str | None:
    """Why these daemons can't run here, or None. The tests skip with this reason and nothing else."""
    gone = missing(programs)
    if gone:
        return f"not installed: {', '.join(gone)} (make test installs them with apt-get when run as root)"
    if os.geteuid() != 0:
        return "the test daemons (munged/slurmd/sshd) need root on this machine kind"
    return None


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _stop(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.time() + 10
    for pid in pids:
        while time.time() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _read_pid(path: Path, timeout: float = 15) -> int:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.is_file() and path.read_text().strip():
            return int(path.read_text().split()[0])
        time.sleep(0.1)
    raise RuntimeError(f"daemon did not write {path}")


class Slurm:
    """munged + slurmctld + slurmd on this host. `env` holds SLURM_CONF (and the munge socket) for sbatch & co."""

    def __init__(self, root: Path, requeue_delay_s: int = 5):
        self.root = Path(root)
        self.requeue_delay_s = requeue_delay_s
        self.pids: list[int] = []
        self.node = socket.gethostname().split(".")[0]

    def start(self) -> "Slurm":
        r = self.root
        for d in ("munge", "state", "spool", "log"):
            (r / d).mkdir(parents=True, exist_ok=True)
        os.chmod(r / "munge", 0o700)
        key = r / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o400)
        sock = r / "munge" / "munge.socket"
        subprocess.run([which("munged"), "--force", f"--key-file={key}", f"--socket={sock}",
                        f"--pid-file={r / 'munge' / 'munged.pid'}", f"--log-file={r / 'log' / 'munged.log'}",
                        f"--seed-file={r / 'munge' / 'seed'}"], check=True, capture_output=True)
        self.pids.append(_read_pid(r / "munge" / "munged.pid"))
        mem_mib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
        ctl_port, d_port = free_port(), free_port()
        conf = r / "slurm.conf"
        conf.write_text("\n".join([
            "ClusterName=odyssey-test",
            f"SlurmctldHost={self.node}",
            "SlurmUser=root", "SlurmdUser=root",
            f"SlurmctldPort={ctl_port}", f"SlurmdPort={d_port}",
            "AuthType=auth/munge", "CryptoType=crypto/munge",
            # cred_expire also sets how long a requeued job waits before it may start again (default 120 s)
            f"AuthInfo=socket={sock},cred_expire={self.requeue_delay_s}",
            f"StateSaveLocation={r / 'state'}", f"SlurmdSpoolDir={r / 'spool'}",
            f"SlurmctldPidFile={r / 'slurmctld.pid'}", f"SlurmdPidFile={r / 'slurmd.pid'}",
            f"SlurmctldLogFile={r / 'log' / 'slurmctld.log'}", f"SlurmdLogFile={r / 'log' / 'slurmd.log'}",
            "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none",
            "SelectType=select/cons_tres", "SelectTypeParameters=CR_Core",
            "ReturnToService=2", "MpiDefault=none", "JobCompType=jobcomp/none",
            "AccountingStorageType=accounting_storage/none", "JobAcctGatherType=jobacct_gather/none",
            "SchedulerParameters=sched_interval=2", "MinJobAge=600", "KillWait=30",
            f"NodeName={self.node} CPUs={os.cpu_count()} RealMemory={int(mem_mib * 0.9)} State=UNKNOWN",
            "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
        ]) + "\n")
        self.env = {**os.environ, "SLURM_CONF": str(conf)}
        for prog in ("slurmctld", "slurmd"):
            subprocess.run([which(prog), "-f", str(conf)], check=True, capture_output=True, env=self.env)
            self.pids.append(_read_pid(r / f"{prog}.pid"))
        self.wait_idle()
        return self

    def wait_idle(self, timeout: float = 60) -> None:
        deadline = time.time() + timeout
        state = ""
        while time.time() < deadline:
            r = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], capture_output=True, text=True, env=self.env)
            state = r.stdout.strip()
            if state.startswith("idle"):
                return
            time.sleep(0.5)
        raise RuntimeError(f"slurm node not idle after {timeout}s (state {state!r}); see {self.root / 'log'}")

    def stop(self) -> None:
        _stop(list(reversed(self.pids)))
        self.pids = []


class SshNodes:
    """Two "nodes" on one machine: an sshd on 127.0.0.1 and one on 127.0.0.2 (same port), root key login, and an
    `ssh` on PATH that reads a client config pointing both hosts at that port.

    - ssh reads ~/.ssh from the passwd entry, not $HOME, so a temp HOME would not keep the tests off the real ~/.ssh;
      a wrapper `ssh -F CONFIG` first on PATH does, for the runner's plain `ssh` check and for pdsh alike.
    - The second sshd runs in its own mount namespace with a private /dev/shm, as a real second node has: ranks of
      two "nodes" sharing one /dev/shm collide in mosaicml-streaming's shared memory (and DeepSpeed's CPU comm
      buffers), which no real cluster would show."""

    HOSTS = ("127.0.0.1", "127.0.0.2")

    def __init__(self, root: Path):
        self.root = Path(root)
        self.pids: list[int] = []

    def start(self) -> "SshNodes":
        r = self.root
        etc, client, bin_dir = r / "sshd", r / "client", r / "bin"
        for d in (etc, client, bin_dir):
            d.mkdir(parents=True, exist_ok=True)
        os.chmod(client, 0o700)
        key = client / "id_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(etc / "host_key")], check=True)
        shutil.copy(key.with_suffix(".pub"), etc / "authorized_keys")
        self.port = free_port()
        Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege-separation dir
        for i, host in enumerate(self.HOSTS):
            conf = etc / f"sshd_{i}.conf"
            conf.write_text("\n".join([
                f"ListenAddress {host}:{self.port}", f"HostKey {etc / 'host_key'}", f"PidFile {etc / f'sshd_{i}.pid'}",
                f"AuthorizedKeysFile {etc / 'authorized_keys'}",
                "PermitRootLogin prohibit-password", "PasswordAuthentication no", "UsePAM no", "StrictModes no",
                "MaxStartups 64", "MaxSessions 64",
            ]) + "\n")
            sshd = f"{which('sshd')} -f {conf} -E {etc / f'sshd_{i}.log'}"
            if i == 0:
                subprocess.run(sshd.split(), check=True)
            else:
                subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                                f"mount -t tmpfs -o size=4g,mode=1777 tmpfs /dev/shm && exec {sshd}"], check=True)
            self.pids.append(_read_pid(etc / f"sshd_{i}.pid"))
        (client / "config").write_text(
            f"Host {' '.join(self.HOSTS)}\n  Port {self.port}\n  User root\n  IdentityFile {key}\n"
            "  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  LogLevel ERROR\n  BatchMode yes\n")
        wrapper = bin_dir / "ssh"
        wrapper.write_text(f'#!/bin/sh\nexec {which("ssh")} -F {client / "config"} "$@"\n')
        wrapper.chmod(0o755)
        self.env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
        for host in self.HOSTS:
            subprocess.run(["ssh", host, "true"], check=True, env=self.env, timeout=30)
        return self

    def stop(self) -> None:
        _stop(self.pids)
        self.pids = []


if __name__ == "__main__":
    kind, where = sys.argv[1], Path(sys.argv[2])
    daemons = Slurm(where).start() if kind == "slurm" else SshNodes(where).start()
    print(f"export SLURM_CONF={where / 'slurm.conf'}" if kind == "slurm" else f"export PATH={where / 'bin'}:$PATH")
