"""Checkpoint files without a training job: COMPLETE's checksums catch a corrupt or truncated file (sizes only with
fast), random generators round-trip through JSON, durable writes replace whole."""
import json
import random

import numpy as np
import pytest
import torch

from trainer import checkpoint
from trainer.checkpoint import CheckpointError


def sealed_folder(root):
    folder = root / checkpoint.tag_for(4)
    folder.mkdir(parents=True)
    (folder / "zero_pp_rank_0_mp_rank_00_optim_states.pt").write_bytes(bytes(range(256)) * 64)
    (folder / "zero_pp_rank_1_mp_rank_00_optim_states.pt").write_bytes(b"\x01" * 5000)
    (folder / checkpoint.CLIENT_STATE).write_text(json.dumps({"step": 4}))
    files = checkpoint._fsync_and_hash(folder, checkpoint._files(folder))
    marker = {"step": 4, "world_size": 2, "files": files}
    checkpoint.write_durable(folder / checkpoint.COMPLETE, json.dumps(marker))
    return folder


def test_checksums_catch_a_flipped_byte_and_fast_checks_sizes_only(tmp_path):
    folder = sealed_folder(tmp_path)
    assert checkpoint.verify(tmp_path, folder.name, world=2)["step"] == 4
    shard = folder / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    data = bytearray(shard.read_bytes())
    data[2500] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="zero_pp_rank_1_mp_rank_00_optim_states.pt does not match its checksum"):
        checkpoint.verify(tmp_path, folder.name, world=2)
    checkpoint.verify(tmp_path, folder.name, world=2, fast=True)  # same size: fast mode cannot see it
    shard.write_bytes(bytes(data[:100]))
    with pytest.raises(CheckpointError, match="is 100 bytes, 5000 when saved"):
        checkpoint.verify(tmp_path, folder.name, world=2, fast=True)
    with pytest.raises(CheckpointError, match="saved by 2 ranks, this run has 4"):
        checkpoint.verify(tmp_path, folder.name, world=4)


def test_a_checkpoint_without_json_client_state_is_refused(tmp_path):
    folder = sealed_folder(tmp_path)
    marker = json.loads((folder / checkpoint.COMPLETE).read_text())
    del marker["files"][checkpoint.CLIENT_STATE]
    (folder / checkpoint.COMPLETE).write_text(json.dumps(marker))
    with pytest.raises(CheckpointError, match="older Odyssey"):
        checkpoint.verify(tmp_path, folder.name)


def test_files_belong_to_the_rank_that_wrote_them():
    assert checkpoint._owner("zero_pp_rank_3_mp_rank_00_model_states.pt") == 3
    assert checkpoint._owner("bf16_zero_pp_rank_12_mp_rank_00_optim_states.pt") == 12
    assert checkpoint._owner("rng_rank5.json") == 5
    assert checkpoint._owner("offloaded_tensors/rank7/x.swp") == 7
    assert checkpoint._owner("mp_rank_00_model_states.pt") == 0 and checkpoint._owner(checkpoint.CLIENT_STATE) == 0


def test_random_generators_round_trip_through_json():
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    np.random.normal()  # a cached gaussian is part of numpy's state
    saved = json.loads(json.dumps(checkpoint._rng_state()))
    expected = (random.random(), np.random.normal(), torch.rand(3))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    checkpoint._set_rng_state(saved)
    got = (random.random(), np.random.normal(), torch.rand(3))
    assert got[0] == expected[0] and got[1] == expected[1] and torch.equal(got[2], expected[2])


def test_durable_write_replaces_whole(tmp_path):
    target = tmp_path / "latest"
    checkpoint.write_durable(target, "step_00000002")
    checkpoint.write_durable(target, "step_00000004")
    assert target.read_text() == "step_00000004" and sorted(p.name for p in tmp_path.iterdir()) == ["latest"]


def test_going_back_sets_the_newer_checkpoints_aside(tmp_path):
    for step in (2, 4, 6):
        folder = tmp_path / checkpoint.tag_for(step)
        folder.mkdir()
        (folder / checkpoint.COMPLETE).write_text("{}")
    (tmp_path / checkpoint.tag_for(8)).mkdir()  # a save killed midway
    (tmp_path / checkpoint.LATEST).write_text(checkpoint.tag_for(6))
    assert checkpoint.set_aside_newer(tmp_path, checkpoint.tag_for(6)) is None  # the newest: nothing to move
    assert (tmp_path / checkpoint.tag_for(8)).is_dir()
    dest = checkpoint.set_aside_newer(tmp_path, checkpoint.tag_for(2))
    assert dest.parent == tmp_path / "set_aside" and dest.name.startswith("step_00000002-")
    assert sorted(p.name for p in dest.iterdir()) == ["step_00000004", "step_00000006", "step_00000008"]
    assert sorted(p.name for p in tmp_path.glob("step_*")) == ["step_00000002"]
    assert checkpoint.resume_tag(tmp_path, "auto") == checkpoint.resume_tag(tmp_path, "latest") == "step_00000002"
    assert checkpoint.prune(tmp_path, 1, None) == [] and dest.is_dir()  # retention never reaches set-aside ones
