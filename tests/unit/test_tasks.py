"""Task data → MDS shards of (input_ids, labels): a source's own splits kept, labels mapped to label words, the first
N training examples, FTICL demonstrations in training rows only, and read back through mosaicml-streaming."""
import json

import numpy as np
import pytest

from data_prep.config import ConfigError, validate
from data_prep.prepare import PrepError
from data_prep.shards import open_split
from data_prep.shards import IGNORE
from data_prep.task_examples import ENCODING
from data_prep.tasks import TaskCfg, prepare_task
from tests import tiny
from tests.cli import odyssey


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return tiny.build_tokenizer(tmp_path_factory.mktemp("tok") / "tok", tiny.prose_docs(80), vocab_size=400)


def task(**over):
    tree = {"name": "summ", "source": "x", "kind": "generation", "template": "Passage: {input}\nTitle:",
            "max_len": 96}
    return validate(TaskCfg, {**tree, **over}, "task")


def rows(split_dir):
    ds = open_split(split_dir)
    return [ds[i] for i in range(ds.num_samples)]


def test_generation_task_keeps_its_splits_and_masks_all_but_the_target(tok, tmp_path):
    docs = tiny.prose_docs(30, seed=3)
    src = tmp_path / "src"
    write_jsonl(src / "train.jsonl", [{"input": d, "output": " " + d.split()[0]} for d in docs[:20]])
    write_jsonl(src / "test.jsonl", [{"input": d, "output": " " + d.split()[0]} for d in docs[20:]])
    m = prepare_task(task(source=str(src), max_train=12, demos=2, max_len=512), tmp_path / "out", str(tok))
    assert m["splits"]["train"]["examples"] == 12 and m["splits"]["test"]["examples"] == 10
    assert m["splits"]["val"]["examples"] == 0 and m["kind"] == "task" and m["encoding"] == ENCODING
    from transformers import AutoTokenizer

    t = AutoTokenizer.from_pretrained(tok)
    for split, with_demos in (("train", True), ("test", False)):
        for row in rows(tmp_path / "out" / "summ" / split):
            ids, labels = row["input_ids"], row["labels"]
            target = t(row["target"], add_special_tokens=False)["input_ids"] + [t.eos_token_id]
            assert list(labels[labels != IGNORE]) == target and list(ids[-len(target):]) == target
            assert np.all(labels[:-len(target)] == IGNORE) and len(ids) <= 512
            assert (t.decode(ids).count("Passage:") == 3) == with_demos  # 2 demonstrations + the example


def test_classification_labels_become_words_and_bad_labels_are_one_line(tok, tmp_path):
    docs = tiny.prose_docs(40, seed=4)
    src = write_jsonl(tmp_path / "c.jsonl", [{"text": d, "y": i % 2} for i, d in enumerate(docs)])
    cfg = task(name="cls", kind="classification", source=str(src), label_field="y",
               label_words={"0": " no", "1": " yes"}, template="Text: {text}\nAnswer:", val=0.2, test=0.2)
    m = prepare_task(cfg, tmp_path / "out", str(tok))
    assert sum(s["examples"] for s in m["splits"].values()) == 40 and m["splits"]["test"]["examples"] > 0
    train = rows(tmp_path / "out" / "cls" / "train")
    assert {r["target"] for r in train} == {" no", " yes"} and all(r["fields"]["text"] in docs for r in train)
    write_jsonl(tmp_path / "bad.jsonl", [{"text": "a b c", "y": 7}])
    with pytest.raises(PrepError, match=r"bad.jsonl:1: label '7' has no label word"):
        prepare_task(cfg.model_copy(update={"source": str(tmp_path / "bad.jsonl"), "name": "bad"}),
                     tmp_path / "out", str(tok))
    assert not (tmp_path / "out" / "bad").exists() and not (tmp_path / "out" / ".bad.partial").exists()
    with pytest.raises(PrepError, match="already exists"):
        prepare_task(cfg, tmp_path / "out", str(tok))


@pytest.mark.parametrize("over, message", [({"template": "no placeholder"}, "needs a {field} placeholder"),
                                           ({"val": 0.5, "test": 0.5}, "must be in \\[0, 1\\) and sum below 1"),
                                           ({"kind": "classification"}, "label_words is required")])
def test_bad_task_configs(over, message):
    with pytest.raises(ConfigError, match=message):
        task(**over)


def test_prep_task_cli(tok, tmp_path):

    src = write_jsonl(tmp_path / "g.jsonl", [{"input": d, "output": " " + d.split()[-1]} for d in tiny.prose_docs(20)])
    spec = tmp_path / "tasks.yaml"
    spec.write_text(f"out: {tmp_path / 'out'}\ntasks:\n  - {{name: g, kind: generation, source: {src}, "
                    f"template: 'Q: {{input}}\\nA:', max_len: 128}}\n")

    def prep(*extra):
        return odyssey(["prep", "--task", spec, *extra])

    r = prep()
    assert r.returncode == 2 and r.stderr.strip().endswith("out and tokenizer are needed (in the file, or "
                                                           "--out/--tokenizer)"), r.stderr
    r = prep("--tokenizer", str(tok))
    assert r.returncode == 0 and "prepared task 'g'" in r.stdout, r.stderr
    assert json.loads((tmp_path / "out" / "g" / "manifest.json").read_text())["splits"]["train"]["examples"] > 0


def test_several_templates_alternate_in_training_and_evaluation_picks_one(tok, tmp_path):
    from transformers import AutoTokenizer

    from trainer.config import ConfigError as TrainerConfigError
    from trainer.task_eval import open_task_set

    docs = tiny.prose_docs(20, seed=6)
    src = write_jsonl(tmp_path / "t.jsonl", [{"input": d[:80], "output": " x"} for d in docs])
    templates = ["Prompt one: {input}\nAnswer:", "Second prompt -> {input} =>"]
    prepare_task(task(source=str(src), template=templates, val=0.0, test=0.3), tmp_path / "out", str(tok))
    t = AutoTokenizer.from_pretrained(tok)
    train = [t.decode(r["input_ids"]) for r in rows(tmp_path / "out" / "summ" / "train")]
    assert [("Prompt one:" in x, "Second prompt" in x) for x in train] == \
        [(i % 2 == 0, i % 2 == 1) for i in range(len(train))]
    assert all("Prompt one:" in t.decode(r["input_ids"]) for r in rows(tmp_path / "out" / "summ" / "test"))
    first = open_task_set("summ", tmp_path / "out" / "summ", "test", t)
    assert first.encoder.template == templates[0]
    from trainer.task_eval import task_set
    from data_prep.manifest import read_manifest

    task_section = read_manifest(tmp_path / "out" / "summ")["task"]
    assert task_set("summ", task_section, first.rows, t, template=1).encoder.template == templates[1]
    with pytest.raises(TrainerConfigError, match="template 2 asked, the task has 2"):
        task_set("summ", task_section, first.rows, t, template=2)
    with pytest.raises(ConfigError, match="the templates must take the same fields"):
        task(template=["A {input}", "B {other}"])


def test_k_shot_demonstrations_come_from_the_test_sets_own_pool_then_the_named_fallback(tok, tmp_path):
    """As in the reference study, a test set's k-shot demonstrations are its own few-shot pool (its training split);
    `demos_from` (a task study names the in-domain task for its out-of-domain sets) serves only where that pool has
    fewer than k examples."""
    from trainer.task_matrix import MatrixTest, demo_pool

    docs = tiny.prose_docs(30, seed=4)
    src = tmp_path / "src"
    write_jsonl(src / "train.jsonl", [{"input": d, "output": " " + d.split()[0]} for d in docs[:20]])
    write_jsonl(src / "test.jsonl", [{"input": d, "output": " " + d.split()[0]} for d in docs[20:]])
    ood = tmp_path / "ood"
    write_jsonl(ood / "train.jsonl", [{"input": d, "output": " " + d.split()[-1]} for d in docs[:3]])
    write_jsonl(ood / "test.jsonl", [{"input": d, "output": " " + d.split()[-1]} for d in docs[3:9]])
    prepare_task(task(source=str(src)), tmp_path / "out", str(tok))
    prepare_task(task(source=str(ood), name="summ_ood"), tmp_path / "out", str(tok))
    own, fallback = str(tmp_path / "out" / "summ_ood"), str(tmp_path / "out" / "summ")
    test = MatrixTest(name="summ_ood", path=own, ood=True, demos_from=fallback)
    assert demo_pool(test, 2) == own and demo_pool(test, 3) == own  # its own 3 training examples
    assert demo_pool(test, 4) == fallback
    assert demo_pool(test.model_copy(update={"demos_from": None}), 4) == own  # check_matrix says it is too small
