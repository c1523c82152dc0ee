"""Checkpoints: DeepSpeed's own sharded save/load, made atomic.

    checkpoints/<tag>/            DeepSpeed shards (model, optimizer, scheduler) + client state + rng_rank<R>.pt
    checkpoints/<tag>/COMPLETE    written by rank 0 after every rank finished writing (barrier)
    checkpoints/latest            the newest complete tag, replaced atomically after COMPLETE

A folder without COMPLETE is an interrupted save and is never loaded.
"""
from __future__ import annotations

import json
import random
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from data_prep.errors import OdysseyError

COMPLETE = "COMPLETE"
LATEST = "latest"


class CheckpointError(OdysseyError, RuntimeError):
    """A checkpoint that cannot be resumed from: one line naming the folder and the problem."""


def tag_for(step: int) -> str:
    return f"step_{step:08d}"


def _rng_state() -> dict:
    """Every generator a rank draws from; on a GPU also the current device's CUDA generator (dropout, init)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def save(engine, root: Path, step: int, client_state: dict, rank: int, world: int) -> Path:
    tag = tag_for(step)
    engine.save_checkpoint(str(root), tag=tag, client_state=client_state, save_latest=False)
    torch.save(_rng_state(), root / tag / f"rng_rank{rank}.pt")
    _barrier()  # every rank has written its shards
    if rank == 0:
        files = {p.name: p.stat().st_size for p in sorted((root / tag).iterdir()) if p.is_file()}
        marker = {"step": step, "world_size": world, "time": time.time(),
                  "tokens_seen": client_state.get("tokens_seen"), "mlflow_run_id": client_state.get("mlflow_run_id"),
                  "files": files}
        (root / tag / COMPLETE).write_text(json.dumps(marker) + "\n")
        tmp = root / (LATEST + ".tmp")
        tmp.write_text(tag)
        tmp.replace(root / LATEST)
    _barrier()
    return root / tag


def prune(root: Path, keep_last: int | None, keep_every: int | None) -> list[str]:
    """Delete complete checkpoints beyond the newest `keep_last`, except steps that are multiples of `keep_every`.
    Incomplete folders older than the newest complete one are leftovers of interrupted saves and go too."""
    if keep_last is None:
        return []
    steps = sorted(int(p.name[5:]) for p in root.glob("step_*") if p.is_dir())
    complete = [s for s in steps if (root / tag_for(s) / COMPLETE).is_file()]
    keep = set(complete[-keep_last:])
    if keep_every:
        keep |= {s for s in complete if s % keep_every == 0}
    newest = complete[-1] if complete else -1
    doomed = [s for s in steps if s not in keep and s <= newest]
    for s in doomed:
        shutil.rmtree(root / tag_for(s), ignore_errors=True)
    return [tag_for(s) for s in doomed]


def check_fresh_start(root: Path) -> None:
    """A new run must not write over an earlier run's checkpoints."""
    if root.is_dir() and any(root.glob("step_*")):
        raise CheckpointError(f"{root} already holds checkpoints; pass --resume auto to continue that run, "
                              f"or choose another run.name / run.out_dir")


def starting_tag(root: Path, resume: str | None, world: int) -> str:
    """The checkpoint a run starts from, checked ('' for a fresh start, which must not overwrite checkpoints)."""
    if not resume:
        check_fresh_start(root)
        return ""
    tag = resolve(root, resume)
    if tag:
        verify(root, tag, world)
    return tag


def resolve(root: Path, which: str) -> str:
    """The tag to resume from: 'auto' (the newest complete checkpoint, or none), 'latest', or an explicit tag."""
    if which == "auto":
        complete = sorted(p.name for p in root.glob("step_*") if (p / COMPLETE).is_file()) if root.is_dir() else []
        return complete[-1] if complete else ""
    if which == "latest":
        latest = root / LATEST
        if not latest.is_file():
            raise CheckpointError(f"{root}: no '{LATEST}' file; nothing to resume from")
        tag = latest.read_text().strip()
        if not tag or "/" in tag or not (root / tag).is_dir():
            raise CheckpointError(f"{latest} names '{tag[:60]}', which is not a checkpoint folder in {root}")
    else:
        tag = which
    if not (root / tag).is_dir():
        raise CheckpointError(f"{root / tag}: no such checkpoint")
    if not (root / tag / COMPLETE).is_file():
        raise CheckpointError(f"{root / tag}: incomplete checkpoint (no {COMPLETE} marker; the save was interrupted)")
    return tag


def verify(root: Path, tag: str, world: int) -> dict:
    """Before loading: the marker parses, the world size matches, and every file the save wrote (every rank's
    shards) is there with its recorded size. Returns the marker."""
    folder = root / tag
    try:
        marker = json.loads((folder / COMPLETE).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{folder / COMPLETE}: unreadable ({err})") from None
    if marker["world_size"] != world:
        raise CheckpointError(f"{folder} was saved by {marker['world_size']} ranks, this run has {world}; "
                              f"resume with the same world size (or export it and start a new run from the export)")
    for name, size in marker.get("files", {}).items():
        path = folder / name
        if not path.is_file():
            raise CheckpointError(f"{folder}: missing {name} (a rank's shard was lost)")
        if path.stat().st_size != size:
            raise CheckpointError(f"{folder}: {name} is {path.stat().st_size} bytes, {size} when saved (truncated)")
    return marker


def load(engine, root: Path, tag: str, rank: int, world: int) -> dict:
    verify(root, tag, world)
    rng = root / tag / f"rng_rank{rank}.pt"
    path, client_state = engine.load_checkpoint(str(root), tag=tag, load_optimizer_states=True,
                                                load_lr_scheduler_states=True)
    if path is None:
        raise CheckpointError(f"{root / tag}: DeepSpeed could not load it")
    _set_rng_state(torch.load(rng, weights_only=False))
    return client_state
