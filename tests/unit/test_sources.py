"""Source kinds beyond the basics, filters, and parallel tokenization matching the inline path."""
import gzip
import json

import numpy as np
import pytest

from data_prep.prepare import PrepOptions, prepare_domain
from data_prep.shards import TOKENS, open_split
from data_prep.sources import SourceError, iter_docs
from tests import tiny
from tests.cli import odyssey

SEQ = 32


def rows(split_dir):
    ds = open_split(split_dir)
    return np.stack([ds[i][TOKENS] for i in range(ds.num_samples)])


def jsonl_bytes(docs, field="text"):
    return "".join(json.dumps({field: d}) + "\n" for d in docs).encode()


@pytest.fixture(scope="module")
def docs():
    return tiny.prose_docs(80, seed=5)


def test_jsonl_gz_and_zst_read_like_plain(tmp_path, docs):
    import zstandard

    (tmp_path / "a.jsonl").write_bytes(jsonl_bytes(docs))
    (tmp_path / "a.jsonl.gz").write_bytes(gzip.compress(jsonl_bytes(docs)))
    (tmp_path / "a.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(jsonl_bytes(docs)))
    plain = [d.text for d in iter_docs(tmp_path / "a.jsonl")]
    assert plain == docs
    assert [d.text for d in iter_docs(tmp_path / "a.jsonl.gz")] == plain
    assert [d.text for d in iter_docs(tmp_path / "a.jsonl.zst")] == plain


def test_hf_load_dataset_of_local_files(tmp_path, docs):
    folder = tmp_path / "jsonl_folder"
    folder.mkdir()
    (folder / "part0.jsonl").write_bytes(jsonl_bytes(docs[:40], "body"))
    (folder / "part1.jsonl").write_bytes(jsonl_bytes(docs[40:], "body"))
    got = [d.text for d in iter_docs(f"hf://{folder}@train", "body")]
    assert sorted(got) == sorted(docs)


def test_hf_load_dataset_failure_is_one_line(tmp_path):
    with pytest.raises(SourceError, match=r"hf://.*load_dataset failed"):
        list(iter_docs(f"hf://{tmp_path / 'nothing_here'}"))


def test_unsupported_and_bad_json(tmp_path):
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(SourceError, match="unsupported source"):
        list(iter_docs(tmp_path / "x.csv"))
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{not json\n')
    with pytest.raises(SourceError, match=r"bad.jsonl:2: not valid JSON"):
        list(iter_docs(tmp_path / "bad.jsonl"))


def test_filters_and_counts(tmp_path, assets, docs):
    src = tiny.write_text_dir(tmp_path / "src", docs + docs[:7] + ["tiny", "   "])
    (src / "zz_latin1.txt").write_bytes(("caf\xe9 " * 400).encode("latin-1"))
    m = prepare_domain(src, tmp_path / "out", "d", str(assets["model"]), SEQ,
                       PrepOptions(min_chars=20, dedup=True, progress=False, workers=0))
    s = m["source"]
    assert s["docs_read"] == len(docs) + 7 + 2 + 1
    assert s["skipped_short"] == 2 and s["skipped_duplicate"] == 7
    assert s["non_utf8_docs"] == 1
    assert s["docs_kept"] == len(docs) + 1 == sum(st["docs"] for st in m["splits"].values())


def test_worker_processes_give_identical_shards(tmp_path, assets, docs):
    src = tiny.write_text_dir(tmp_path / "src", docs * 3)
    inline = prepare_domain(src, tmp_path / "a", "d", str(assets["model"]), SEQ, PrepOptions(progress=False, workers=0))
    pooled = prepare_domain(src, tmp_path / "b", "d", str(assets["model"]), SEQ, PrepOptions(progress=False, workers=2))
    assert inline["splits"] == pooled["splits"]
    for split in ("train", "val", "test"):
        assert np.array_equal(rows(tmp_path / "a" / "d" / split), rows(tmp_path / "b" / "d" / split))


def test_prep_yaml_many_domains(tmp_path, assets, docs):

    tiny.write_text_dir(tmp_path / "prose", docs)
    tiny.write_jsonl(tmp_path / "code.jsonl", tiny.code_docs(20), field="body")
    (tmp_path / "prep.yaml").write_text(f"""
out: {tmp_path / 'domains'}
tokenizer: {assets['model']}
seq_len: {SEQ}
workers: 0
domains:
  - {{name: prose, source: {tmp_path / 'prose'}, dedup: true}}
  - {{name: code, source: {tmp_path / 'code.jsonl'}, text_field: body, min_chars: 10, test: 0.3, val: 0.3}}
""")
    r = odyssey(["prep", "--config", tmp_path / "prep.yaml", "--quiet"])
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "domains").iterdir()) == ["code", "prose"]
    assert "prepared domain 'code'" in r.stdout and "prepared domain 'prose'" in r.stdout
    (tmp_path / "bad.yaml").write_text("domains: [{name: x, source: y, colour: red}]\n")
    r = odyssey(["prep", "--config", tmp_path / "bad.yaml"])
    assert r.returncode == 2 and "prep key 'domains.0.colour': unknown key" in r.stderr


@pytest.mark.timeout(120)
def test_a_dead_tokenizer_worker_fails_the_prep_instead_of_hanging():
    """A worker whose tokenizer won't load dies in its initializer; multiprocessing.Pool would respawn it forever."""
    from data_prep.tokenize import Batch, TokenizeError, encode_all

    with pytest.raises(TokenizeError, match="worker process died"):
        list(encode_all([Batch(["some text"], ["train"])], "not a tokenizer", 0, workers=2))
