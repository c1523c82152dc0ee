"""Start-up shard checks under 2 real ranks: a shard corrupted on the node (same size, one byte flipped, so only its
checksum sees it) is hashed by the node's local rank 0 alone, and every rank stops with exit 2 and one line: none
waits for the others. (Once per node: tests/dist/test_train_zero3.py counts the hashing lines of a whole job.)"""
import json
import shutil

import pytest

from tests.dist.helpers import start_ranks, wait_ranks

pytestmark = pytest.mark.slow


def test_a_corrupt_shard_stops_every_rank_with_one_line(assets, tmp_path):
    domain = tmp_path / "prose"
    shutil.copytree(assets["domains"] / "prose", domain)
    shards = json.loads((domain / "train" / "index.json").read_text())["shards"]
    for each in shards:  # an earlier test's training may have left streaming's decompressed copies beside them
        if each.get("zip_data"):
            (domain / "train" / each["raw_data"]["basename"]).unlink(missing_ok=True)
    shard = shards[0]
    path = domain / "train" / (shard.get("zip_data") or shard["raw_data"])["basename"]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"""
model: {{path: {assets['model']}}}
data: {{streams: [{{name: prose, path: {domain}}}], micro_batch: 2}}
run: {{out_dir: {tmp_path}, name: c, max_steps: 1}}
eval: {{interval: 0, max_samples: 4}}
tracking: {{experiment: test}}
""")
    done = wait_ranks(start_ranks(["train", str(cfg)], cwd=tmp_path), timeout=300)
    assert [rc for rc, _, _ in done] == [2, 2], [err[-2000:] for _, _, err in done]
    errors = [line for _, _, err in done for line in err.splitlines() if line.startswith("odyssey: error")]
    assert len(errors) == 1, errors
    assert f"prose/train/{path.name}: xxh64 does not match the index (corrupt) (rank 0 on " in errors[0]
    assert not any("Traceback" in err for _, _, err in done)
    assert not any("shard checksums" in out for _, out, _ in done)  # nothing claims the shards were verified
