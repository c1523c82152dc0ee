"""The decompressed copy streaming keeps beside each compressed shard is what training reads once it exists. Bits
flipped in it (size unchanged), injected here from the test's side: the start-up check rebuilds it from the verified
compressed shard and says so in one line, training then reads the clean samples, and `odyssey prep --validate` names
the copy. Both files corrupt: one line naming the compressed shard, and the run does not start."""
import json

import numpy as np
import pytest

from data_prep.prepare import PrepOptions, prepare_domain
from data_prep.shards import open_split
from data_prep.validate import ValidationError, require_valid
from tests import tiny
from tests.cli import odyssey


@pytest.fixture()
def domain(tmp_path, assets):
    src = tiny.write_text_dir(tmp_path / "src", tiny.prose_docs(150, seed=5))
    prepare_domain(src, tmp_path / "out", "prose", str(assets["model"]), 32,
                   PrepOptions(progress=False, workers=0, size_limit="4kb"))
    return tmp_path / "out" / "prose"


def samples(split_dir) -> list[np.ndarray]:
    """Every sample of the split through streaming's reader (which decompresses each shard beside it on first use)."""
    ds = open_split(split_dir)
    rows = [np.asarray(ds[i]["tokens"]).copy() for i in range(ds.num_samples)]
    del ds
    return rows


def flip(path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x5A
    path.write_bytes(bytes(data))


def test_a_corrupt_decompressed_copy_is_rebuilt_from_the_verified_shard(domain, capsys):
    clean = samples(domain / "train")
    shard = json.loads((domain / "train" / "index.json").read_text())["shards"][1]
    raw = domain / "train" / shard["raw_data"]["basename"]
    assert raw.is_file(), "streaming left no decompressed copy"
    size = raw.stat().st_size
    flip(raw)
    assert raw.stat().st_size == size
    assert any((a != b).any() for a, b in zip(clean, samples(domain / "train")))  # the damage reaches training

    r = odyssey(["prep", "--validate", domain])
    assert r.returncode == 1
    assert (f"prose/train/{raw.name}: sha1 does not match the index (corrupt): a decompressed copy; delete it and "
            f"streaming decompresses {shard['zip_data']['basename']} again") in r.stdout

    capsys.readouterr()
    require_valid(domain)  # the training start-up check (once per node, data.verify_hashes)
    assert capsys.readouterr().out.strip() == (f"[odyssey] prose/train/{raw.name}: xxh64 does not match the index "
                                               f"(corrupt): rebuilt from {shard['zip_data']['basename']}, which "
                                               f"matches the index")
    after = samples(domain / "train")
    assert len(after) == len(clean) and all((a == b).all() for a, b in zip(clean, after))
    require_valid(domain)
    assert capsys.readouterr().out == ""  # sound now: nothing to say
    assert not list(raw.parent.glob(".*.tmp"))


def test_both_copies_corrupt_stop_the_run_naming_the_shard(domain):
    samples(domain / "train")
    shard = json.loads((domain / "train" / "index.json").read_text())["shards"][0]
    flip(domain / "train" / shard["raw_data"]["basename"])
    flip(domain / "train" / shard["zip_data"]["basename"])
    with pytest.raises(ValidationError, match=f"^prose/train/{shard['zip_data']['basename']}: xxh64 does not match "
                                              r"the index \(corrupt\)$"):
        require_valid(domain)
