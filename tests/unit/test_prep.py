"""odyssey prep: every source kind, the manifest, the shards' content, and the bad inputs."""
import json

import numpy as np
import pytest

from data_prep.manifest import read_manifest, tokenizer_fingerprint
from data_prep.pack import SPLITS, SplitFractions, split_of
from data_prep.prepare import PrepError, PrepOptions, prepare_domain
from data_prep.tokenize import load_tokenizer
from data_prep.shards import TOKENS, open_split
from data_prep.sources import SourceError
from tests import tiny

SEQ = 32
FAST = PrepOptions(progress=False, workers=0)


def read_rows(split_dir):
    ds = open_split(split_dir)
    return np.stack([ds[i][TOKENS] for i in range(ds.num_samples)])


@pytest.fixture(scope="module")
def docs():
    return tiny.prose_docs(120, seed=3)


def expected_stream(docs, tok, split):
    f = SplitFractions()
    ids = []
    for d in docs:
        if split_of(d, f) == split:
            ids += tok(d, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    return ids


@pytest.mark.parametrize("kind", ["text_dir", "jsonl", "parquet", "hf"])
def test_every_source_kind_packs_the_same_tokens(tmp_path, assets, docs, kind):
    if kind == "text_dir":
        src = tiny.write_text_dir(tmp_path / "src", docs)
    elif kind == "jsonl":
        src = tiny.write_jsonl(tmp_path / "src.jsonl", docs, field="body")
    elif kind == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        src = tmp_path / "src.parquet"
        pq.write_table(pa.table({"body": docs}), src)
    else:
        import datasets

        src = tmp_path / "hf"
        datasets.Dataset.from_dict({"body": docs}).save_to_disk(str(src))
    m = prepare_domain(src, tmp_path / "out", "d", str(assets["model"]), SEQ, PrepOptions(text_field="body", progress=False, workers=0))
    tok = load_tokenizer(str(assets["model"]))
    # text folders are read in file-name order, which is the docs' order here
    for split in SPLITS:
        rows = read_rows(tmp_path / "out" / "d" / split)
        assert rows.shape[1] == SEQ and rows.dtype == np.int32
        want = expected_stream(docs, tok, split)
        assert rows.reshape(-1).tolist() == want[: rows.size]
        assert m["splits"][split]["samples"] == len(rows) == len(want) // SEQ
        assert m["splits"][split]["dropped_tokens"] == len(want) % SEQ


def test_manifest_fields(tmp_path, assets, docs):
    src = tiny.write_text_dir(tmp_path / "src", docs)
    prepare_domain(src, tmp_path / "out", "prose", str(assets["model"]), SEQ, FAST)
    m = read_manifest(tmp_path / "out" / "prose")
    tok = load_tokenizer(str(assets["model"]))
    assert m["domain"] == "prose" and m["seq_len"] == SEQ
    assert m["tokenizer"]["vocab_sha256"] == tokenizer_fingerprint(tok)["vocab_sha256"]
    assert m["tokenizer"]["eos_id"] == tok.eos_token_id
    assert sum(s["docs"] for s in m["splits"].values()) == len(docs)
    assert len(m["source"]["files"]) == len(docs)
    assert all(len(f["sha256"]) == 64 for f in m["source"]["files"])
    assert json.loads((tmp_path / "out" / "prose" / "manifest.json").read_text()) == m


def test_splits_do_not_share_documents(tmp_path, assets, docs):
    src = tiny.write_text_dir(tmp_path / "src", docs + docs[:10])  # duplicates land in one split
    m = prepare_domain(src, tmp_path / "out", "d", str(assets["model"]), SEQ, FAST)
    f = SplitFractions()
    per_split = {s: sum(1 for d in docs + docs[:10] if split_of(d, f) == s) for s in SPLITS}
    assert {s: m["splits"][s]["docs"] for s in SPLITS} == per_split


def test_missing_source(tmp_path, assets):
    with pytest.raises(SourceError, match="source not found"):
        prepare_domain(tmp_path / "nope", tmp_path / "out", "d", str(assets["model"]), SEQ)


def test_empty_domain_leaves_nothing_behind(tmp_path, assets):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a.txt").write_text("   \n")
    with pytest.raises(PrepError, match="no non-empty documents"):
        prepare_domain(tmp_path / "empty", tmp_path / "out", "d", str(assets["model"]), SEQ, FAST)
    assert list((tmp_path / "out").iterdir()) == []


def test_too_little_text_for_a_test_sample(tmp_path, assets):
    src = tiny.write_text_dir(tmp_path / "src", ["just a few words " * 3])
    with pytest.raises(PrepError, match="split has no full sample"):
        prepare_domain(src, tmp_path / "out", "d", str(assets["model"]), SEQ, FAST)


def test_existing_output_needs_overwrite(tmp_path, assets, docs):
    src = tiny.write_text_dir(tmp_path / "src", docs)
    prepare_domain(src, tmp_path / "out", "d", str(assets["model"]), SEQ, FAST)
    with pytest.raises(PrepError, match="already exists"):
        prepare_domain(src, tmp_path / "out", "d", str(assets["model"]), SEQ, FAST)
    prepare_domain(src, tmp_path / "out", "d", str(assets["model"]), SEQ * 2, PrepOptions(overwrite=True, progress=False, workers=0))
    assert read_manifest(tmp_path / "out" / "d")["seq_len"] == SEQ * 2
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["d"]


def test_bad_jsonl_field(tmp_path, assets, docs):
    src = tiny.write_jsonl(tmp_path / "s.jsonl", docs, field="body")
    with pytest.raises(SourceError, match="no field 'text'"):
        prepare_domain(src, tmp_path / "out", "d", str(assets["model"]), SEQ, FAST)
    assert not (tmp_path / "out" / "d").exists()


def test_non_utf8_bytes_do_not_crash(tmp_path, assets, docs):
    src = tiny.write_text_dir(tmp_path / "src", docs)
    (src / "zz_bad.txt").write_bytes(b"caf\xe9 and \xff\xfe bytes " * 50)
    m = prepare_domain(src, tmp_path / "out", "d", str(assets["model"]), SEQ, FAST)
    assert sum(s["docs"] for s in m["splits"].values()) == len(docs) + 1
