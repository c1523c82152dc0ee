"""Runs `trainer.train` as one rank, with faults and probes the tests put in from their side (the product code has no
test switches). Started by DeepSpeed's per-node launcher, as `deepspeed --num_gpus 2 --module tests.dist.wrap CONFIG
...` would start it (tests/dist/helpers.py: wrapped).

  TEST_LOSS_FAULTS="3:nan,6:1000"  on the last rank, the Nth training forward's loss becomes NaN, or is multiplied
  TEST_RECORD_COLLECTIVES=DIR      every tensor that trainer/ code hands to a torch.distributed collective is recorded
                                   (call site, device), with the engine's device, in DIR/rank<R>.json at exit
  TEST_RECORD_GATHERED=DIR         after every training forward, how many of the model's parameters ZeRO-3 still holds
                                   gathered (and how many there are), in DIR/gathered-rank<R>.json at exit
  TEST_RECORD_BATCHES=DIR          every training forward's input_ids and labels, as the model gets them, in
                                   DIR/batches-rank<R>.json at exit
  TEST_RECORD_SELECTION=DIR        every Rho-1 selection (loss.select_top) in a training forward: the batch's input_ids,
                                   the current and base losses, the scored and the kept positions, in
                                   DIR/selection-rank<R>.json at exit
  TEST_KILL_IN_SAVE=1              right after DeepSpeed wrote the shards of the first checkpoint this job saves
                                   (before COMPLETE), the last rank SIGKILLs its process group: start the job in a
                                   session of its own
  TEST_FAIL_IN_SAVE=1              the last rank's first optimizer-shard write of this job writes half the file, then
                                   fails as on a full disk (ENOSPC), while the other ranks' writes succeed
  TEST_NODE_LOCAL=DIR               the last rank sees an empty tmpfs of its own at DIR (a mount namespace of its own),
                                   as a rank on another node sees a node-local folder (needs root)
  TEST_STEP_SLEEP=S                every training forward sleeps S seconds (a slower step, so outages span steps)
  TEST_RAISE_AT=N                  the Nth training forward raises RuntimeError (a crash mid-run)
"""
from __future__ import annotations

import atexit
import json
import os
import sys
from pathlib import Path

TRAINER = str(Path(__file__).resolve().parents[2] / "trainer")
COLLECTIVES = ("all_reduce", "all_gather", "all_gather_into_tensor", "reduce_scatter_tensor", "broadcast", "reduce",
               "all_to_all_single", "gather", "scatter")


def inject_loss_faults(spec: str) -> None:
    import deepspeed.runtime.engine as ds_engine
    import torch

    faults = {int(n): f for n, f in (item.split(":") for item in spec.split(","))}
    # DeepSpeedEngine.train()/eval() set the wrapped module's mode only, so that is what tells eval forwards apart
    original = ds_engine.DeepSpeedEngine.forward
    count = [0]

    def forward(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        if self.module.training and int(os.environ["RANK"]) == int(os.environ["WORLD_SIZE"]) - 1:
            count[0] += 1
            fault = faults.get(count[0])
            if fault:
                out.loss = out.loss * (torch.tensor(float("nan")) if fault == "nan" else float(fault))
        return out

    ds_engine.DeepSpeedEngine.forward = forward


def kill_in_save() -> None:
    import signal

    import deepspeed.runtime.engine as ds_engine

    original = ds_engine.DeepSpeedEngine.save_checkpoint

    def save_checkpoint(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        if int(os.environ["RANK"]) == int(os.environ["WORLD_SIZE"]) - 1:
            os.killpg(os.getpgrp(), signal.SIGKILL)  # the whole job at once, as when its node goes down
        return out

    ds_engine.DeepSpeedEngine.save_checkpoint = save_checkpoint


def fail_in_save() -> None:
    import errno

    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    original = TorchCheckpointEngine.save
    failed = []

    def save(self, state_dict, path):
        if path.endswith("optim_states.pt") and not failed and \
                int(os.environ["RANK"]) == int(os.environ["WORLD_SIZE"]) - 1:
            failed.append(path)
            Path(path).write_bytes(b"\0" * 4096)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
        return original(self, state_dict, path)

    TorchCheckpointEngine.save = save


def node_local(path: str) -> None:
    import ctypes
    import subprocess

    if int(os.environ["RANK"]) != int(os.environ["WORLD_SIZE"]) - 1:
        return
    if ctypes.CDLL(None, use_errno=True).unshare(0x00020000):  # CLONE_NEWNS
        raise OSError(ctypes.get_errno(), "unshare")
    subprocess.run(["mount", "--make-rprivate", "/"], check=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", path], check=True)


def slow_or_crash(sleep_s: float, raise_at: int) -> None:
    import time

    import deepspeed.runtime.engine as ds_engine

    original = ds_engine.DeepSpeedEngine.forward
    count = [0]

    def forward(self, *args, **kwargs):
        if self.module.training:
            count[0] += 1
            time.sleep(sleep_s)
            if count[0] == raise_at:
                raise RuntimeError(f"injected crash at training forward {raise_at}")
        return original(self, *args, **kwargs)

    ds_engine.DeepSpeedEngine.forward = forward


def record_collectives(out_dir: str) -> None:
    import deepspeed
    import torch
    import torch.distributed as dist

    records: list[dict] = []
    engine_device: list[str] = []

    def wrap(name, fn):
        def recorded(*args, **kwargs):
            caller = sys._getframe(1)
            if caller.f_code.co_filename.startswith(TRAINER):
                tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
                site = f"{Path(caller.f_code.co_filename).name}:{caller.f_code.co_name}"
                records.extend({"op": name, "site": site, "device": str(t.device)} for t in tensors)
            return fn(*args, **kwargs)

        return recorded

    for name in COLLECTIVES:
        setattr(dist, name, wrap(name, getattr(dist, name)))
    initialize = deepspeed.initialize

    def initialize_and_note(*args, **kwargs):
        result = initialize(*args, **kwargs)
        engine_device.append(str(result[0].device))
        return result

    deepspeed.initialize = initialize_and_note

    def dump():
        path = Path(out_dir) / f"rank{os.environ['RANK']}.json"
        path.write_text(json.dumps({"engine_device": engine_device, "records": records}))

    atexit.register(dump)


def record_gathered(out_dir: str) -> None:
    import deepspeed.runtime.engine as ds_engine
    from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

    original = ds_engine.DeepSpeedEngine.forward
    counts: list[list[int]] = []

    def forward(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        if self.module.training:
            params = list(self.module.parameters())
            counts.append([sum(p.ds_status == ZeroParamStatus.AVAILABLE for p in params), len(params)])
        return out

    ds_engine.DeepSpeedEngine.forward = forward
    atexit.register(lambda: (Path(out_dir) / f"gathered-rank{os.environ['RANK']}.json").write_text(json.dumps(counts)))


def record_batches(out_dir: str) -> None:
    import deepspeed.runtime.engine as ds_engine

    original = ds_engine.DeepSpeedEngine.forward
    seen: list[dict] = []

    def forward(self, *args, **kwargs):
        if self.module.training:
            seen.append({k: kwargs[k].tolist() for k in ("input_ids", "labels")})
        return original(self, *args, **kwargs)

    ds_engine.DeepSpeedEngine.forward = forward
    atexit.register(lambda: (Path(out_dir) / f"batches-rank{os.environ['RANK']}.json").write_text(json.dumps(seen)))


def record_selection(out_dir: str) -> None:
    import deepspeed.runtime.engine as ds_engine

    import trainer.loss

    original_forward, original_select = ds_engine.DeepSpeedEngine.forward, trainer.loss.select_top
    seen: list[dict] = []

    def forward(self, *args, **kwargs):
        if self.module.training:
            seen.append({"input_ids": kwargs["input_ids"].tolist()})
        return original_forward(self, *args, **kwargs)

    def select_top(losses, base, scored, fraction):
        keep = original_select(losses, base, scored, fraction)
        seen[-1].update(now=losses.tolist(), base=base.tolist(), scored=scored.tolist(), keep=keep.tolist(),
                        fraction=fraction)
        return keep

    ds_engine.DeepSpeedEngine.forward = forward
    trainer.loss.select_top = select_top
    atexit.register(lambda: (Path(out_dir) / f"selection-rank{os.environ['RANK']}.json").write_text(json.dumps(seen)))


if __name__ == "__main__":
    if os.environ.get("TEST_LOSS_FAULTS"):
        inject_loss_faults(os.environ["TEST_LOSS_FAULTS"])
    if os.environ.get("TEST_RECORD_COLLECTIVES"):
        record_collectives(os.environ["TEST_RECORD_COLLECTIVES"])
    if os.environ.get("TEST_RECORD_GATHERED"):
        record_gathered(os.environ["TEST_RECORD_GATHERED"])
    if os.environ.get("TEST_RECORD_BATCHES"):
        record_batches(os.environ["TEST_RECORD_BATCHES"])
    if os.environ.get("TEST_RECORD_SELECTION"):
        record_selection(os.environ["TEST_RECORD_SELECTION"])
    if os.environ.get("TEST_KILL_IN_SAVE"):
        kill_in_save()
    if os.environ.get("TEST_NODE_LOCAL"):
        node_local(os.environ["TEST_NODE_LOCAL"])
    if os.environ.get("TEST_FAIL_IN_SAVE"):
        fail_in_save()
    if os.environ.get("TEST_STEP_SLEEP") or os.environ.get("TEST_RAISE_AT"):
        slow_or_crash(float(os.environ.get("TEST_STEP_SLEEP", 0)), int(os.environ.get("TEST_RAISE_AT", 0)))
    from trainer.train import main

    sys.exit(main(sys.argv[1:]))
