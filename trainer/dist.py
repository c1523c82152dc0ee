"""Where this process runs in a job: its rank, the world, its node-local rank and its device, as one `Dist` value that
components take whole (as litgpt passes its `fabric`), and how a process learns it from its launcher.

Launchers say it through the environment: the deepspeed launcher and torchrun set RANK / LOCAL_RANK / WORLD_SIZE /
MASTER_*; srun sets SLURM_PROCID and friends, mapped here. A process with none of them is a world of one.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, Mapping

import torch

from data_prep.config import ConfigError
from data_prep.errors import OdysseyError


@dataclass(frozen=True)
class Dist:
    """This rank of the job. `Dist()` is a world of one on the CPU (a plain process, a unit test)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        """Rank 0: the one rank that writes shared files, logs to MLflow and prints."""
        return self.rank == 0


def in_srun_step(env: Mapping[str, str]) -> bool:
    """Inside an srun step, one task per device. A batch script or an salloc shell also carries SLURM_PROCID, and
    taking it there would wait for ranks that never start; only a step sets SLURM_STEP_NUM_TASKS."""
    return "SLURM_STEP_NUM_TASKS" in env and "SLURM_PROCID" in env


def launched_rank(env: Mapping[str, str] | None = None) -> bool:
    """Whether this process is one rank of a started job (deepspeed, torchrun or srun started it) rather than a
    command someone typed: checks that run once per job, and local launches, happen only in the latter."""
    env = os.environ if env is None else env
    return "RANK" in env or in_srun_step(env)


def slurm_rank_env(env: Mapping[str, str]) -> dict[str, str]:
    """RANK/LOCAL_RANK/WORLD_SIZE/LOCAL_WORLD_SIZE/MASTER_* from SLURM's ids, for one task per device started by srun;
    only inside an srun step and only where no launcher set RANK."""
    if "RANK" in env or not in_srun_step(env):
        return {}
    out = {"RANK": env["SLURM_PROCID"], "LOCAL_RANK": env.get("SLURM_LOCALID", "0"),
           "WORLD_SIZE": env["SLURM_STEP_NUM_TASKS"]}
    # SLURM_STEP_TASKS_PER_NODE looks like "2(x3),1": this node's count is the entry for SLURM_NODEID
    counts = []
    for part in env.get("SLURM_STEP_TASKS_PER_NODE", out["WORLD_SIZE"]).split(","):
        n, _, times = part.partition("(x")
        counts += [n] * int(times.rstrip(")") or 1)
    out["LOCAL_WORLD_SIZE"] = counts[min(int(env.get("SLURM_NODEID", "0")), len(counts) - 1)]
    from launch.hostfile import master_addr, master_port, slurm_hosts

    if "MASTER_ADDR" not in env:
        out["MASTER_ADDR"] = master_addr(slurm_hosts(env.get("SLURM_STEP_NODELIST") or env["SLURM_JOB_NODELIST"]))
    if "MASTER_PORT" not in env:
        out["MASTER_PORT"] = str(master_port(env.get("SLURM_JOB_ID", "0")))
    return out


def rank_cores(local_world: int, env: Mapping[str, str] | None = None, cores: int | None = None,
               parent_cores: int | None = None) -> int:
    """The cores this rank may use by itself. The affinity (`cores`) is what the job allows (SLURM, cgroups). A
    launcher that starts every local rank with that same affinity (deepspeed, torchrun, srun without task binding)
    leaves it to be shared by `local_world` ranks; one that binds each rank to a slice of its own has divided it
    already, and dividing again left 1 loader worker per rank: srun --cpus-per-task=N with task binding (an srun
    task is this rank, and its affinity is at most N), or a binding wrapper (deepspeed --bind_cores_to_rank,
    numactl), seen as an affinity smaller than the launcher's (`parent_cores`, this process's parent). A wrong
    "not sliced" costs workers; a wrong "sliced" is capped by loader_workers' 4."""
    env = os.environ if env is None else env
    cores = len(os.sched_getaffinity(0)) if cores is None else cores
    if parent_cores is None:
        try:
            parent_cores = len(os.sched_getaffinity(os.getppid()))
        except OSError:  # the parent is gone
            parent_cores = cores
    per_task = env.get("SLURM_CPUS_PER_TASK", "")
    srun_rank = in_srun_step(env) and env.get("WORLD_SIZE", env["SLURM_STEP_NUM_TASKS"]) == env["SLURM_STEP_NUM_TASKS"]
    sliced = (srun_rank and per_task.isdigit() and cores <= int(per_task)) or cores < parent_cores
    return cores if sliced else max(1, cores // max(1, local_world))


def select_device(local_rank: int) -> torch.device:
    """This rank's device: GPU `local_rank`, made current before anything touches CUDA (else every rank's first
    allocation, and NCCL's communicator, land on cuda:0). CPU where there is no GPU."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    if local_rank >= torch.cuda.device_count():
        raise ConfigError(f"LOCAL_RANK={local_rank} but this node has {torch.cuda.device_count()} GPU(s) visible "
                          f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')})")
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


def init_distributed() -> Dist:
    """Join the process group started by deepspeed/srun/torchrun, or a world of one when run as a plain process."""
    import deepspeed

    from launch.hostfile import master_port

    os.environ.update(slurm_rank_env(dict(os.environ)))
    for var, default in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"),
                         ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", str(master_port(os.getpid())))):
        os.environ.setdefault(var, default)
    # mosaicml-streaming needs LOCAL_WORLD_SIZE; the deepspeed launcher only sets LOCAL_SIZE (see docs/PITFALLS.md).
    os.environ.setdefault("LOCAL_WORLD_SIZE", os.environ.get("LOCAL_SIZE", os.environ["WORLD_SIZE"]))
    if "OMP_NUM_THREADS" not in os.environ:  # torchrun sets 1; deepspeed's launcher and srun leave every local rank
        torch.set_num_threads(rank_cores(int(os.environ["LOCAL_WORLD_SIZE"])))  # all the cores: N ranks contend
    local_rank = int(os.environ["LOCAL_RANK"])
    device = select_device(local_rank)
    deepspeed.init_distributed(dist_backend=None, verbose=False)
    return Dist(torch.distributed.get_rank(), torch.distributed.get_world_size(), local_rank, device)


PROBLEM_BYTES = 1024


def first_problem(problem: str | None, dist: Dist) -> str | None:
    """The lowest failing rank's problem, known to every rank (None: no rank had one), so that all ranks stop
    together with the same line instead of the others waiting in their next collective until the launcher kills
    them. Two small collectives on device tensors (NCCL takes no host tensors); the line is cut at 1 KiB."""
    if dist.world == 1 or not torch.distributed.is_initialized():
        return problem
    who = torch.tensor([dist.rank if problem is not None else dist.world], dtype=torch.int64, device=dist.device)
    torch.distributed.all_reduce(who, op=torch.distributed.ReduceOp.MIN)
    src = int(who.item())
    if src == dist.world:
        return None
    text = torch.zeros(PROBLEM_BYTES, dtype=torch.uint8, device=dist.device)
    raw = (problem or "failed").encode()[:PROBLEM_BYTES] if dist.rank == src else b""
    if raw:
        text[:len(raw)] = torch.frombuffer(bytearray(raw), dtype=torch.uint8).to(dist.device)
    torch.distributed.broadcast(text, src=src)
    return bytes(text.cpu().tolist()).rstrip(b"\0").decode(errors="replace")


def failure_of(write: Callable[..., object], *args, **kwargs) -> Exception | None:
    """Run a write that only some ranks make: None, or what it raised, for `stop_together` (the other ranks wait
    there, so they must hear of any failure, a full disk or a bug)."""
    try:
        write(*args, **kwargs)
    except Exception as err:
        return err
    return None


def stop_together(problem: str | Exception | None, dist: Dist) -> None:
    """Where every rank passes anyway (an eval's end, a save's start, the job's start and end): a write that failed
    on any rank (a full disk: `DiskFull`'s line, from rank 0's token tables or journal, any rank's ledger) ends
    every rank here with that rank's line (an OdysseyError), instead of the others waiting in their next collective.
    `problem` may be this rank's own exception: an OdysseyError counts as its line; another kind (a bug) is raised
    here with its traceback, the others stopping with its summary. One small collective, never per step."""
    if isinstance(problem, Exception) and dist.world == 1:
        raise problem  # alone: as it is
    own = problem if isinstance(problem, Exception) and not isinstance(problem, OdysseyError) else None
    text = f"rank {dist.rank}: {type(own).__name__}: {own}" if own else problem and str(problem)
    agreed = first_problem(text, dist)
    if own is not None:
        raise own
    if agreed is not None:
        raise OdysseyError(agreed)
