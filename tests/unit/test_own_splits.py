"""Sources that bring their own train/valid/test split keep it, document for document: an archive laid out like
M2D2's (`<domain>.tar.gz` with train.txt / valid.txt / test.txt, one document per line), a HF DatasetDict, and a
hub-style dataset folder read through hf://. Sources without splits are still split by document hash."""
import json
import random
import tarfile

import numpy as np

from data_prep.manifest import read_manifest
from data_prep.prepare import PrepOptions, prepare_domain
from data_prep.shards import TOKENS, open_split
from data_prep.sources import hf_spec, iter_docs
from data_prep.text_files import documents
from tests import tiny

SEQ = 64
SPLIT_FILES = {"train": "train.txt", "val": "valid.txt", "test": "test.txt"}


def split_docs(n_per_split=(60, 12, 12)):
    """Documents that name their split and index ('train doc 7 marks ...'), each well over one row of tokens."""
    rng = random.Random(5)
    out = {}
    for split, n in zip(SPLIT_FILES, n_per_split):
        out[split] = [f"{split} doc {i} marks " + " ".join(rng.choice(tiny.WORDS) for _ in range(60)) for i in range(n)]
    return out


def decoded_split(domain, split, tokenizer):
    ds = open_split(domain / split)
    ids = np.concatenate([ds[i][TOKENS] for i in range(ds.num_samples)])
    return tokenizer.decode(ids.tolist())


def assert_each_split_holds_its_documents(domain, docs, tokenizer):
    manifest = read_manifest(domain)
    assert manifest["splits_from"] == "source" and manifest["split_fractions"] is None
    for split, texts in docs.items():
        assert manifest["splits"][split]["docs"] == len(texts)
        text = decoded_split(domain, split, tokenizer)
        for i, doc in enumerate(texts[:-1]):  # the last document's tail may not fill a row and is dropped
            assert doc in text, (split, i)
        for other in set(docs) - {split}:
            assert f"{other} doc " not in text


def test_m2d2_archive_keeps_its_splits(tmp_path, assets):
    from transformers import AutoTokenizer

    docs = split_docs()
    folder = tmp_path / "m2d2" / "cs.AI"
    folder.mkdir(parents=True)
    for split, name in SPLIT_FILES.items():
        (folder / name).write_text("\n".join(docs[split]) + "\n")
    archive = tmp_path / "cs.AI.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="cs.AI")
    prepare_domain(archive, tmp_path / "domains", "cs.AI", str(assets["model"]), SEQ,
                   PrepOptions(progress=False, workers=0, boundary="line"))
    domain = tmp_path / "domains" / "cs.AI"
    assert_each_split_holds_its_documents(domain, docs, AutoTokenizer.from_pretrained(assets["model"]))
    assert read_manifest(domain)["source"]["boundary"] == "line"


def test_hf_dataset_dict_keeps_its_splits(tmp_path, assets):
    import datasets
    from transformers import AutoTokenizer

    docs = split_docs()
    names = {"train": "train", "val": "validation", "test": "test"}
    datasets.DatasetDict({names[s]: datasets.Dataset.from_dict({"text": t}) for s, t in docs.items()}).save_to_disk(
        tmp_path / "hfdict")
    prepare_domain(tmp_path / "hfdict", tmp_path / "domains", "d", str(assets["model"]), SEQ,
                   PrepOptions(progress=False, workers=0))
    assert_each_split_holds_its_documents(tmp_path / "domains" / "d", docs,
                                          AutoTokenizer.from_pretrained(assets["model"]))


def test_hf_load_reads_a_dataset_folder_with_split_files(tmp_path):
    docs = split_docs((5, 2, 3))
    folder = tmp_path / "ds"
    folder.mkdir()
    for split, name in (("train", "train"), ("val", "validation"), ("test", "test")):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in docs[split]))
    got = list(iter_docs(f"hf://{folder}"))
    assert {s: [d.text for d in got if d.split == s] for s in docs} == docs
    only_test = list(iter_docs(f"hf://{folder}@test"))
    assert [d.text for d in only_test] == docs["test"] and {d.split for d in only_test} == {None}


def test_hf_spec_names_config_and_split():
    assert hf_spec("hf://machelreid/m2d2:cs.AI@test") == ("machelreid/m2d2", "cs.AI", "test")
    assert hf_spec("hf://org/name") == ("org/name", None, None)
    assert hf_spec("hf://org/name@train") == ("org/name", None, "train")


def test_document_boundaries():
    text = "one line\nsecond line\n\nthird, after a blank line\n"
    assert documents(text, "file") == [text]
    assert documents(text, "line") == ["one line", "second line", "third, after a blank line"]
    assert documents(text, "blank_line") == ["one line\nsecond line", "third, after a blank line"]


def test_a_split_name_among_other_files_is_not_a_split(tmp_path):
    """A code tree with a test/ folder next to other files is one source, split by hash."""
    (tmp_path / "src" / "test").mkdir(parents=True)
    (tmp_path / "src" / "main.py").write_text("x = 1\n")
    (tmp_path / "src" / "test" / "test_main.py").write_text("assert x\n")
    assert {d.split for d in iter_docs(tmp_path / "src")} == {None}
    (tmp_path / "src" / "main.py").rename(tmp_path / "src" / "train.py")  # now every file names a split
    assert {d.key: d.split for d in iter_docs(tmp_path / "src")} == {"test/test_main.py": "test", "train.py": "train"}


def test_a_source_without_splits_is_still_split_by_hash(tmp_path, assets):
    tiny.write_text_dir(tmp_path / "plain", tiny.prose_docs(120))
    prepare_domain(tmp_path / "plain", tmp_path / "domains", "p", str(assets["model"]), SEQ,
                   PrepOptions(progress=False, workers=0))
    manifest = read_manifest(tmp_path / "domains" / "p")
    assert manifest["splits_from"] == "document hash" and manifest["split_fractions"] == {"val": 0.05, "test": 0.05}
