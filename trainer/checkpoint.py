"""Checkpoints: DeepSpeed's own sharded save/load, made atomic, durable and checked.

    checkpoints/<tag>/                    DeepSpeed shards (model, optimizer, scheduler) of every rank
    checkpoints/<tag>/client_state.json   the RunState and the loader's state (rank 0): JSON, so reading it runs no code
    checkpoints/<tag>/rng_rank<R>.json    every random generator of rank R
    checkpoints/<tag>/COMPLETE            written by rank 0 last, once every rank fsynced and hashed its own files:
                                          step, world size, save time and {file: [bytes, xxh64]}
    checkpoints/latest                    the newest complete tag, replaced atomically after COMPLETE

A folder without COMPLETE is an interrupted or failed save and is never loaded. A save that fails (a full disk, any
error) removes its folder and raises one line; the previous checkpoint and `latest` are untouched.
DeepSpeed's own loader unpickles its shards (torch.load with weights_only=False): resume from, evaluate or export only
checkpoints you trust (docs/TRAINING.md).
"""
from __future__ import annotations

import base64
import json
import os
import random
import re
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from data_prep.errors import OdysseyError

COMPLETE = "COMPLETE"
LATEST = "latest"
CLIENT_STATE = "client_state.json"
HASH_CHUNK = 8 << 20
_RANK_IN_NAME = re.compile(r"(?:pp_rank_|rng_rank|/rank)(\d+)")  # DeepSpeed's zero_pp_rank_<R>_..., ours, NVMe rank<R>


class CheckpointError(OdysseyError, RuntimeError):
    """A checkpoint that cannot be saved or resumed from: one line naming the folder and the problem."""


def tag_for(step: int) -> str:
    return f"step_{step:08d}"


def _tensor_text(t: torch.Tensor) -> str:
    return base64.b64encode(t.numpy().tobytes()).decode()


def _text_tensor(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8)


def _rng_state() -> dict:
    """Every generator a rank draws from, as JSON; on a GPU also the current device's CUDA generator."""
    version, words, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": [version, list(words), gauss], "numpy": [kind, keys.tolist(), pos, has_gauss, cached],
             "torch": _tensor_text(torch.get_rng_state())}
    if torch.cuda.is_available():
        state["cuda"] = _tensor_text(torch.cuda.get_rng_state().cpu())
    return state


def _set_rng_state(state: dict) -> None:
    version, words, gauss = state["python"]
    random.setstate((version, tuple(words), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(_text_tensor(state["torch"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(_text_tensor(state["cuda"]))


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def fsync(path: Path) -> None:
    """Flush a file or a folder (its entries) to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durable(path: Path, text: str) -> None:
    """Write through a temp file, fsync it, rename it into place and fsync the folder: all or nothing, on disk."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    fsync(path.parent)


def digest(path: Path) -> str:
    import xxhash

    h = xxhash.xxh64()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name != COMPLETE)


def _owner(name: str) -> int:
    """The rank that wrote a file (DeepSpeed and we put it in the name); rank 0 for the shared ones."""
    m = _RANK_IN_NAME.search("/" + name)
    return int(m.group(1)) if m else 0


def _seal(folder: Path, names: list[str]) -> dict[str, list]:
    """fsync and hash files this rank wrote: on a shared filesystem only the writer's fsync reaches the disk."""
    out = {}
    for name in names:
        fsync(folder / name)
        out[name] = [(folder / name).stat().st_size, digest(folder / name)]
    return out


def _gather(obj, world: int) -> list:
    if world == 1 or not dist.is_initialized():
        return [obj]
    out = [None] * world
    dist.all_gather_object(out, obj)
    return out


def _free_bytes(root: Path) -> int:
    return shutil.disk_usage(root if root.is_dir() else root.parent).free


def _size(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def check_room(root: Path, step: int, rank: int, world: int, device) -> None:
    """Before a save, every rank agrees whether the disk can hold another checkpoint the size of the last one (the
    common full-disk case ends cleanly on every rank, before anything is written)."""
    last = resolve(root, "auto") if root.is_dir() else ""
    need = sum(size for size, _ in json.loads((root / last / COMPLETE).read_text())["files"].values()) if last else 0
    free = _free_bytes(root)
    short = torch.tensor([float(need > free)], device=device)
    if world > 1 and dist.is_initialized():
        dist.all_reduce(short, op=dist.ReduceOp.MAX)
    if short.item():
        raise CheckpointError(f"no room to save step {step} in {root}: {_size(free)} free, the last checkpoint "
                              f"({last}) took {_size(need)}; free space (checkpoint.keep_last) and --resume auto "
                              f"from {last or 'it'}")


def save(engine, root: Path, step: int, client_state: dict, rank: int, world: int) -> tuple[Path, float]:
    """Every rank writes its shards, then fsyncs and hashes its own files; rank 0 writes COMPLETE with all of them,
    then `latest`. Returns the folder and the seconds the save took."""
    t0 = time.time()
    tag = tag_for(step)
    folder = root / tag
    check_room(root, step, rank, world, engine.device)
    if rank == 0 and folder.exists():
        shutil.rmtree(folder)  # a failed or killed save of this step (never COMPLETE)
    _barrier()
    try:
        engine.save_checkpoint(str(root), tag=tag, client_state={}, save_latest=False)
        (folder / f"rng_rank{rank}.json").write_text(json.dumps(_rng_state()))
        if rank == 0:
            (folder / CLIENT_STATE).write_text(json.dumps(client_state))
        _barrier()  # every rank's files are there: each seals the ones it wrote
        names = _files(folder)
        sealed = _gather(_seal(folder, [n for n in names if _owner(n) % world == rank]), world)
        if rank == 0:
            files = {k: v for part in sealed for k, v in part.items()}
            files.update(_seal(folder, [n for n in names if n not in files]))
            for sub in {folder / n for n in files if "/" in n}:
                fsync(sub.parent)
            fsync(folder)
            marker = {"step": step, "world_size": world, "time": time.time(), "save_s": round(time.time() - t0, 3),
                      "tokens_seen": client_state.get("tokens_seen"),
                      "mlflow_run_id": client_state.get("mlflow_run_id"), "files": files}
            write_durable(folder / COMPLETE, json.dumps(marker) + "\n")
            write_durable(root / LATEST, tag)
    except (OSError, RuntimeError) as err:
        shutil.rmtree(folder, ignore_errors=True)
        lines = str(err).strip().splitlines() or [type(err).__name__]
        why = err.strerror if isinstance(err, OSError) and err.strerror else lines[-1][:200]
        raise CheckpointError(f"rank {rank}: saving {folder} failed ({why}; {_size(_free_bytes(root))} left there); "
                              f"the partial folder was removed, the previous checkpoint is intact (--resume auto)",
                              rank_local=True) from None
    _barrier()
    return folder, time.time() - t0


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


def starting_tag(root: Path, resume: str | None, rank: int, world: int, fast: bool = False) -> str:
    """The checkpoint a run starts from, verified ('' for a fresh start, which must not overwrite checkpoints)."""
    if not resume:
        check_fresh_start(root)
        return ""
    tag = resolve(root, resume)
    if tag:
        verify(root, tag, world, fast=fast, rank=rank)
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


def _file_problem(folder: Path, name: str, size: int, xxh: str, fast: bool) -> str | None:
    path = folder / name
    if not path.is_file():
        return f"missing {name} (a rank's shard was lost)"
    if path.stat().st_size != size:
        return f"{name} is {path.stat().st_size} bytes, {size} when saved (truncated)"
    if not fast and digest(path) != xxh:
        return f"{name} does not match its checksum (xxh64 {xxh} when saved): the file is corrupt"
    return None


def verify(root: Path, tag: str, world: int | None = None, fast: bool = False, rank: int = 0) -> dict:
    """Before loading: the marker parses, the world size matches (when given), and every file the save wrote is
    there with its size and, unless `fast`, its xxh64. Under a launcher the ranks split the hashing and agree.
    Returns the marker."""
    folder = root / tag
    try:
        marker = json.loads((folder / COMPLETE).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{folder / COMPLETE}: unreadable ({err})") from None
    if world is not None and marker["world_size"] != world:
        raise CheckpointError(f"{folder} was saved by {marker['world_size']} ranks, this run has {world}; "
                              f"resume with the same world size (or export it and start a new run from the export)")
    if CLIENT_STATE not in marker.get("files", {}):
        raise CheckpointError(f"{folder}: saved by an older Odyssey (no {CLIENT_STATE}); export it and start a new "
                              f"run from the export")
    share = world if world and dist.is_initialized() else 1
    names = sorted(marker["files"])[rank::share]
    problems = [p for n in names if (p := _file_problem(folder, n, *marker["files"][n], fast))]
    problems = [p for part in _gather(problems, share) for p in part]
    if problems:
        raise CheckpointError(f"{folder}: {problems[0]}" + (f" (and {len(problems) - 1} more)" if problems[1:] else ""))
    return marker


def load(engine, root: Path, tag: str, rank: int) -> dict:
    """A verified checkpoint (starting_tag) into the engine; returns the client state, read as JSON."""
    folder = root / tag
    path, _ = engine.load_checkpoint(str(root), tag=tag, load_optimizer_states=True, load_lr_scheduler_states=True)
    if path is None:
        raise CheckpointError(f"{folder}: DeepSpeed could not load it")
    _set_rng_state(json.loads((folder / f"rng_rank{rank}.json").read_text()))
    return json.loads((folder / CLIENT_STATE).read_text())
