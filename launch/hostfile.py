"""Hostfiles and the master address for multi-node launches, from SLURM's node list or a list of hosts.

    python -m launch.hostfile --hosts node1,node2 --slots 8 --out hostfile     # prints MASTER_ADDR=...
    python -m launch.hostfile --from-slurm --slots 8 --out hostfile            # inside an allocation
    python -m launch.hostfile --from-slurm --master-addr                       # only the address
    python -m launch.hostfile --from-slurm --master-port                       # only the port (this job's)

The master address is the first host's IP as the *other* nodes see it. A head node whose own name resolves to a
loopback address (Debian's `127.0.1.1 <hostname>` line in /etc/hosts) is the classic multi-node hang: every rank
waits on a rendezvous nobody can reach. That case is refused with one line instead.
"""
from __future__ import annotations

import argparse
import ipaddress
import os
import socket
import subprocess
import sys
import zlib
from pathlib import Path

from data_prep import console
from data_prep.errors import OdysseyError
from data_prep.guard import guarded


DEFAULT_PORT = 29500  # torch's and DeepSpeed's rendezvous port


class LaunchError(OdysseyError, RuntimeError):
    """A launch that would fail or hang: one line for the user."""


def master_port(job: str | int | None = None) -> int:
    """The one rule for rendezvous ports, used by the Python side and (through `--master-port`) by the shell scripts.
    A job alone on its nodes: 29500. A job that may share a node with others passes what names it (a SLURM job id, a
    study, a process id) and gets a port of its own, 20000 + that number (or a hash of the name) mod 20000."""
    if job is None:
        return DEFAULT_PORT
    number = int(job) if str(job).isdigit() else zlib.crc32(str(job).encode())
    return 20000 + number % 20000


def slurm_hosts(nodelist: str | None = None) -> list[str]:
    """Expand a SLURM node list ("gpu[01-03],cpu7") with `scontrol show hostnames`, the one true parser."""
    nodelist = nodelist or os.environ.get("SLURM_JOB_NODELIST") or os.environ.get("SLURM_NODELIST")
    if not nodelist:
        raise LaunchError("no SLURM node list: run inside an allocation (SLURM_JOB_NODELIST) or pass --hosts")
    try:
        r = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True)
    except FileNotFoundError:
        raise LaunchError("scontrol not found on PATH: needed to expand the SLURM node list") from None
    except subprocess.CalledProcessError as err:
        raise LaunchError(f"scontrol could not expand node list {nodelist!r}: {err.stderr.strip()}") from None
    return r.stdout.split()


def resolve(host: str) -> str:
    try:
        return socket.getaddrinfo(host, None, socket.AF_INET, socket.SOCK_STREAM)[0][4][0]
    except socket.gaierror as err:
        raise LaunchError(f"host {host!r} does not resolve ({err.strerror})") from None


def master_addr(hosts: list[str]) -> str:
    """IPv4 address of the first host; refused if it is a loopback address while another node is not."""
    if not hosts:
        raise LaunchError("empty host list")
    addrs = [resolve(h) for h in hosts]
    loop = [ipaddress.ip_address(a).is_loopback for a in addrs]
    if loop[0] and not all(loop):
        raise LaunchError(f"the head node {hosts[0]} resolves to {addrs[0]} (loopback) but other nodes are remote: "
                          f"they could never reach the rendezvous; set MASTER_ADDR to its cluster IP or fix /etc/hosts")
    return addrs[0]


def hostfile_text(hosts: list[str], slots: int) -> str:
    if slots < 1:
        raise LaunchError(f"slots per host must be at least 1 (got {slots})")
    if len(set(hosts)) != len(hosts):
        raise LaunchError(f"a host is listed twice: {', '.join(hosts)}")
    return "".join(f"{h} slots={slots}\n" for h in hosts)


def default_slots() -> int:
    """Devices per node: SLURM's GPU count, else the GPUs torch sees, else 1."""
    for var in ("SLURM_GPUS_ON_NODE", "SLURM_GPUS_PER_NODE"):
        value = os.environ.get(var, "").split(":")[-1]
        if value.isdigit() and int(value) > 0:
            return int(value)
    try:
        import torch

        return torch.cuda.device_count() or 1
    except ImportError:
        return 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m launch.hostfile", description=__doc__.splitlines()[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--hosts", help="comma-separated host names or addresses")
    src.add_argument("--from-slurm", action="store_true", help="the hosts of this SLURM allocation")
    p.add_argument("--slots", type=int, default=None, help="ranks per host (default: GPUs per node, else 1)")
    p.add_argument("--out", help="write the deepspeed hostfile here")
    p.add_argument("--master-addr", action="store_true", help="print only the master address")
    p.add_argument("--master-port", action="store_true", help="print only the rendezvous port: MASTER_PORT, else "
                                                              "this SLURM job's (--from-slurm), else the default")
    args = p.parse_args(argv)
    return guarded(lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    if args.master_port:
        job = os.environ.get("SLURM_JOB_ID") if args.from_slurm else None
        console.out(os.environ.get("MASTER_PORT") or str(master_port(job)))
        return 0
    hosts = slurm_hosts() if args.from_slurm else [h.strip() for h in args.hosts.split(",") if h.strip()]
    addr = os.environ.get("MASTER_ADDR") or master_addr(hosts)
    if args.master_addr:
        console.out(addr)
        return 0
    text = hostfile_text(hosts, args.slots or default_slots())
    if args.out:
        tmp = Path(f"{args.out}.tmp{os.getpid()}")
        tmp.write_text(text)
        tmp.replace(args.out)
    else:
        console.out(text.rstrip("\n"))
    console.out(f"MASTER_ADDR={addr}", stderr=not args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
