"""Checkpoints: DeepSpeed's own sharded save/load, made atomic, durable and checked.

    checkpoints/<tag>/                    DeepSpeed shards (model, optimizer, scheduler) of every rank
    checkpoints/<tag>/client_state.json   the RunState and the loader's state (rank 0): JSON, so reading it runs no code
    checkpoints/<tag>/rng_rank<R>.json    every random generator of rank R
    checkpoints/<tag>/COMPLETE            written by rank 0 last, once every rank fsynced and hashed its own files:
                                          step, world size, save time and {file: [bytes, xxh64]}
    checkpoints/latest                    the newest complete tag, replaced atomically after COMPLETE
    checkpoints/set_aside/<tag>-<time>/   checkpoints newer than <tag>, moved there by a resume from <tag>

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

from data_prep.disk import free_bytes, size_text, write_atomic
from data_prep.errors import OdysseyError
from trainer.dist import Dist, failure_of, stop_together

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


def _fsync_and_hash(folder: Path, names: list[str]) -> dict[str, list]:
    """fsync and hash files this rank wrote: on a shared filesystem only the writer's fsync reaches the disk."""
    out = {}
    for name in names:
        fsync(folder / name)
        out[name] = [(folder / name).stat().st_size, digest(folder / name)]
    return out


def _gather(obj, world: int) -> list:
    if world == 1 or not torch.distributed.is_initialized():
        return [obj]
    out = [None] * world
    torch.distributed.all_gather_object(out, obj)
    return out


def check_room(root: Path, step: int, dist: Dist) -> None:
    """Before a save, every rank agrees whether the disk can hold another checkpoint the size of the last one (the
    common full-disk case ends cleanly on every rank, before anything is written)."""
    try:
        last = resume_tag(root, "auto") if root.is_dir() else ""
        need = sum(size for size, _ in json.loads((root / last / COMPLETE).read_text())["files"].values()) if last else 0
        free = free_bytes(root)
    except (OSError, ValueError, KeyError):  # unmeasurable here: the save itself will say what is wrong
        last, need, free = "", 0, 1
    short = torch.tensor([float(need > free)], device=dist.device)
    if dist.world > 1 and torch.distributed.is_initialized():
        torch.distributed.all_reduce(short, op=torch.distributed.ReduceOp.MAX)
    if short.item():
        raise CheckpointError(f"no room to save step {step} in {root}: {size_text(free)} free, the last checkpoint "
                              f"({last}) took {size_text(need)}; free space (checkpoint.keep_last) and --resume auto "
                              f"from {last or 'it'}")


def _reason(err: BaseException) -> str:
    """A failed write or call as one short reason."""
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    lines = str(err).strip().splitlines() or [type(err).__name__]
    if "inline_container" in lines[-1]:  # torch.save's zip writer on a full disk (docs/PITFALLS.md)
        return f"a write failed, the disk is probably full (torch.save: {lines[-1].split('] ')[-1][:120]})"
    return lines[-1][:200]


def _try_part(fn, *args, **kwargs) -> tuple[object, str | None]:
    """Run one part of a save: (its result, None), or (None, its failure as one short reason)."""
    try:
        return fn(*args, **kwargs), None
    except (OSError, RuntimeError) as err:
        return None, _reason(err)


def _agree_on_failure(problem: str | None, dist: Dist, value=None) -> tuple[str | None, list]:
    """Every rank learns the first failure of any rank ("rank R: why"), so that all of them stop together instead of
    the others waiting in the next collective until the launcher kills them; and every rank's `value`."""
    parts = _gather((f"rank {dist.rank}: {problem}" if problem else None, value), dist.world)
    return next((p for p, _ in parts if p), None), [v for _, v in parts]


def _fresh_folder(folder: Path) -> None:
    if folder.exists():
        shutil.rmtree(folder)  # a failed or killed save of this step (never COMPLETE)
    folder.mkdir(parents=True)


def _write_own_state(folder: Path, rank: int, client_state: dict) -> None:
    (folder / f"rng_rank{rank}.json").write_text(json.dumps(_rng_state()))
    if rank == 0:
        (folder / CLIENT_STATE).write_text(json.dumps(client_state))


def _write_complete(root: Path, folder: Path, sealed: list[dict], marker: dict) -> None:
    """Rank 0, once every rank sealed its files: seal the shared ones and the folders, then COMPLETE, then latest."""
    files = {k: v for part in sealed for k, v in part.items()}
    files.update(_fsync_and_hash(folder, [n for n in _files(folder) if n not in files]))
    for sub in {folder / n for n in files if "/" in n}:
        fsync(sub.parent)
    fsync(folder)
    write_durable(folder / COMPLETE, json.dumps({**marker, "files": files}) + "\n")
    write_durable(root / LATEST, folder.name)


def _deepspeed_save(engine, folder: Path, dist: Dist) -> str | None:
    """DeepSpeed's sharded save on this rank. A write that fails is noted rather than raised inside DeepSpeed, whose
    save goes on through its own collectives (ZeRO-3 gathers parameters after the writes, then a barrier), so a rank
    with a full disk still meets the others there; the ranks agree after it. Returns the first failed write."""
    writer, failed = engine.checkpoint_engine, []
    write, own = writer.save, "save" in vars(writer)

    def save_or_note(state_dict, path):
        if not failed:  # after a failure this rank's save is lost anyway: write nothing more
            try:
                write(state_dict, path)
            except (OSError, RuntimeError) as err:
                failed.append(_reason(err))

    writer.save = save_or_note  # the engine's pluggable writer, for this save only
    try:
        engine.save_checkpoint(str(folder.parent), tag=folder.name, client_state={}, save_latest=False)
    except (OSError, RuntimeError) as err:  # outside the writes (say the copy of zero_to_fp32.py)
        if dist.world == 1:
            return _reason(err)
        # the other ranks may wait in one of DeepSpeed's collectives: this rank says why, the launcher ends the rest
        raise CheckpointError(f"rank {dist.rank}: saving {folder} failed ({_reason(err)}); the previous checkpoint is "
                              f"intact (--resume auto)", rank_local=True) from None
    finally:
        if own:
            writer.save = write
        else:
            del writer.save
    return failed[0] if failed else None


def save(engine, root: Path, step: int, client_state: dict, dist: Dist) -> tuple[Path, float]:
    """Every rank writes its shards, then fsyncs and hashes its own files; rank 0 writes COMPLETE with all of them,
    then `latest`. The ranks agree after each part, so a failure on any rank (a full disk, any error) ends the save
    on all of them with the same line. Returns the folder and the seconds the save took."""
    t0 = time.time()
    folder = root / tag_for(step)
    rank, world = dist.rank, dist.world
    check_room(root, step, dist)
    problem, _ = _agree_on_failure(_try_part(_fresh_folder, folder)[1] if rank == 0 else None, dist)
    if not problem:
        local = _deepspeed_save(engine, folder, dist) or \
            _try_part(_write_own_state, folder, rank, client_state)[1]
        problem, _ = _agree_on_failure(local, dist)
    if not problem:  # every rank's files are there: each seals the ones it wrote
        sealed, local = _try_part(
            lambda: _fsync_and_hash(folder, [n for n in _files(folder) if _owner(n) % world == rank]))
        problem, sealed = _agree_on_failure(local, dist, sealed)
    if not problem:
        marker = {"step": step, "world_size": world, "time": time.time(), "save_s": round(time.time() - t0, 3),
                  "tokens_seen": client_state.get("tokens_seen"), "mlflow_run_id": client_state.get("mlflow_run_id")}
        local = _try_part(_write_complete, root, folder, sealed, marker)[1] if rank == 0 else None
        problem, _ = _agree_on_failure(local, dist)
    if problem:
        if rank == 0:
            shutil.rmtree(folder, ignore_errors=True)
        raise CheckpointError(f"saving {folder} failed on {problem} ({size_text(free_bytes(root))} left there); "
                              f"the partial folder was removed, the previous checkpoint is intact (--resume auto)")
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


def set_aside_newer(root: Path, tag: str) -> Path | None:
    """Resuming from a checkpoint older than the newest complete one (an explicit tag) abandons the steps after
    it: the newer folders move to `set_aside/<tag>-<time>/`, so that neither `--resume auto` nor this attempt's own
    saves of those steps mix them with the new ones. Returns that folder, or None when nothing was newer."""
    newer = [p for p in root.glob("step_*") if p.is_dir() and p.name > tag]
    if not any((p / COMPLETE).is_file() for p in newer):
        return None
    dest = root / "set_aside" / f"{tag}-{time.strftime('%Y%m%d-%H%M%S')}"
    dest.mkdir(parents=True)
    for p in sorted(newer):
        p.rename(dest / p.name)
    fsync(dest)
    write_durable(root / LATEST, tag)
    return dest


def check_shared(run_dir: Path, dist: Dist) -> None:
    """Every rank must see the run folder rank 0 writes (checkpoint shards, COMPLETE): a folder local to each node
    would leave checkpoints that no node holds whole. Rank 0 leaves a file there, the others look for it."""
    if dist.world == 1 or not torch.distributed.is_initialized():
        return
    rank, device = dist.rank, dist.device
    stamp = time.time_ns()
    probe = run_dir / f".shared-{stamp}"
    stop_together(failure_of(write_atomic, probe, b"") if rank == 0 else None, dist)  # a full disk: every rank stops
    shared = torch.tensor([stamp if rank == 0 else 0], dtype=torch.int64, device=device)
    torch.distributed.broadcast(shared, src=0)  # rank 0 enters it after writing the probe
    probe = run_dir / f".shared-{int(shared.item())}"
    missing = torch.tensor([float(rank if not probe.is_file() else 0)], device=device)
    torch.distributed.all_reduce(missing, op=torch.distributed.ReduceOp.MAX)
    if rank == 0:
        probe.unlink(missing_ok=True)
    if missing.item():
        raise CheckpointError(f"run.out_dir {run_dir.parent} is not shared: rank {int(missing.item())} cannot see "
                              f"the files rank 0 writes there; put it on a filesystem every node mounts")


def check_fresh_start(root: Path) -> None:
    """A new run must not write over an earlier run's checkpoints."""
    if root.is_dir() and any(root.glob("step_*")):
        raise CheckpointError(f"{root} already holds checkpoints; pass --resume auto to continue that run, "
                              f"or choose another run.name / run.out_dir")


def starting_tag(root: Path, resume: str | None, dist: Dist, fast: bool = False) -> str:
    """The checkpoint a run starts from, verified ('' for a fresh start, which must not overwrite checkpoints)."""
    if not resume:
        check_fresh_start(root)
        return ""
    tag = resume_tag(root, resume)
    if tag:
        verify(root, tag, dist.world, fast=fast, rank=dist.rank)
    return tag


def resume_tag(root: Path, which: str) -> str:
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
    try:
        if not path.is_file():
            return f"missing {name} (a rank's shard was lost)"
        if path.stat().st_size != size:
            return f"{name} is {path.stat().st_size} bytes, {size} when saved (truncated)"
        if not fast and digest(path) != xxh:
            return f"{name} does not match its checksum (xxh64 {xxh} when saved): the file is corrupt"
    except OSError as err:
        return f"{name} cannot be read ({err.strerror or err})"
    return None


def verify(root: Path, tag: str, world: int | None = None, fast: bool = False, rank: int = 0,
           share: int | None = None) -> dict:
    """Before loading: the marker parses, the world size matches (when given), and every file the save wrote is
    there with its size and, unless `fast`, its xxh64. Under a launcher the `share` ranks (default: `world`) split
    the hashing and agree. Returns the marker."""
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
    share = (share or world or 1) if torch.distributed.is_initialized() else 1
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
