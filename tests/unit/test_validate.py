"""Validation catches each kind of damage, in `odyssey prep --validate` and at training start-up (one line naming
the shard, before step 1)."""
import json
import shutil

import pytest

from data_prep.prepare import PrepOptions, prepare_domain
from data_prep.validate import ValidationError, require_valid, validate_domain
from tests import tiny
from tests.cli import odyssey

SEQ = 32


@pytest.fixture()
def domain(tmp_path, assets):
    src = tiny.write_text_dir(tmp_path / "src", tiny.prose_docs(150, seed=11))
    prepare_domain(src, tmp_path / "out", "prose", str(assets["model"]), SEQ,
                   PrepOptions(progress=False, workers=0, size_limit="4kb"))
    return tmp_path / "out" / "prose"


def shard(domain, split="train", i=1):
    index = json.loads((domain / split / "index.json").read_text())
    assert len(index["shards"]) > i
    return domain / split / index["shards"][i]["zip_data"]["basename"]


def validate_cli(*args):
    return odyssey(["prep", "--validate", *args])


def test_sound_domain_passes(domain, assets):
    assert validate_domain(domain, deep=True) == []
    assert len(json.loads((domain / "train" / "index.json").read_text())["shards"]) > 2  # size_limit splits shards
    r = validate_cli(domain.parent, "--tokenizer", assets["model"])
    assert r.returncode == 0 and r.stdout.startswith("OK")


def test_flipped_bytes(domain):
    f = shard(domain)
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))
    problems = validate_domain(domain, deep=True)
    assert problems == [f"prose/train/{f.name}: sha1 does not match the index (corrupt)"]
    with pytest.raises(ValidationError, match=f"prose/train/{f.name}: xxh64 does not match"):
        require_valid(domain)
    r = validate_cli(domain)
    assert r.returncode == 1 and f.name in r.stdout


def test_truncated_shard(domain):
    f = shard(domain, "test", 0)
    f.write_bytes(f.read_bytes()[:-10])
    with pytest.raises(ValidationError, match=f"prose/test/{f.name}: .* bytes, index says .* \\(truncated"):
        require_valid(domain, hashes=False)


def test_missing_shard(domain):
    f = shard(domain, "train", 2)
    f.unlink()
    with pytest.raises(ValidationError, match=f"{f.parent.name}/{f.name}: missing"):
        require_valid(domain)


def test_wrong_tokenizer(domain, tmp_path):
    from data_prep.manifest import tokenizer_fingerprint
    from data_prep.tokenize import load_tokenizer

    other = tiny.build_tokenizer(tmp_path / "other", tiny.prose_docs(50, seed=2), vocab_size=300)
    fp = tokenizer_fingerprint(load_tokenizer(str(other)))
    with pytest.raises(ValidationError, match="shards were made with tokenizer"):
        require_valid(domain, fingerprint=fp)
    r = validate_cli(domain, "--tokenizer", other)
    assert r.returncode == 1 and "shards were made with tokenizer" in r.stdout


def test_token_ids_out_of_range(domain, assets, tmp_path):
    """Shards whose ids exceed the vocabulary (e.g. packed with a bigger tokenizer, manifest edited)."""
    m = json.loads((domain / "manifest.json").read_text())
    m["tokenizer"]["vocab_size"] = 100
    (domain / "manifest.json").write_text(json.dumps(m))
    problems = validate_domain(domain, deep=True)
    assert problems and all("outside the tokenizer's vocabulary of 100" in p for p in problems)


def test_training_stops_before_step_1_naming_the_shard(domain, assets, tmp_path):
    f = shard(domain, "test", 0)
    f.write_bytes(f.read_bytes()[:-1])
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model: {{path: {assets['model']}}}\ndata: {{streams: [{{name: prose, path: {domain}}}]}}\n"
                   f"run: {{out_dir: {tmp_path / 'runs'}, max_steps: 2}}\n")
    r = odyssey(["train", cfg])
    errors = [line for line in r.stderr.splitlines() if line.startswith("odyssey: error")]
    assert r.returncode == 2 and len(errors) == 1, r.stderr
    assert f"prose/test/{f.name}" in errors[0]
    assert not (tmp_path / "runs").exists()


def test_missing_split_folder(domain):
    shutil.rmtree(domain / "test")
    with pytest.raises(ValidationError, match="prose/test/index.json: missing"):
        require_valid(domain)
