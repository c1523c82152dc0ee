"""The offline task builder (demo/task_assets.py) on its PyPI-only part, ScanCode's license data: real
classification and generation tasks with in-domain and out-of-domain test sets, which `odyssey prep --task` prepares
(the out-of-domain set as an eval-only task)."""
import json

from data_prep.config import validate
from data_prep.tasks import TaskCfg, prepare_task
from demo.task_assets import license_tasks
from tests import tiny


def read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_license_tasks_are_real_disjoint_and_prepare(tmp_path):
    license_tasks(tmp_path)
    train, test = read(tmp_path / "license_category" / "train.jsonl"), read(tmp_path / "license_category" / "test.jsonl")
    ood = read(tmp_path / "license_category_ood" / "test.jsonl")
    assert len(train) > 1000 and len(test) == 150 and len(ood) > 100
    assert {r["label"] for r in train + test + ood} == {"permissive", "copyleft"}
    seen = {r["input"] for r in train}
    assert not seen & {r["input"] for r in test + ood}
    assert sum(len(r["input"]) for r in ood) / len(ood) < sum(len(r["input"]) for r in test) / len(test)  # notices
    titles = read(tmp_path / "license_title" / "test.jsonl")
    assert all(r["output"].startswith(" ") and len(r["output"]) > 3 for r in titles)

    tok = tiny.build_tokenizer(tmp_path / "tok", [r["input"] for r in train[:200]], vocab_size=500)
    for name, folder in (("cls", "license_category"), ("cls_ood", "license_category_ood")):
        cfg = validate(TaskCfg, {"name": name, "source": str(tmp_path / folder), "kind": "classification",
                                 "template": "License: {input}\nKind:", "max_len": 256,
                                 "label_words": {"permissive": " permissive", "copyleft": " copyleft"}}, "task")
        m = prepare_task(cfg, tmp_path / "out", str(tok))
        assert (m["splits"]["train"]["examples"] > 1000) == (name == "cls")
        assert m["splits"]["test"]["examples"] == (150 if name == "cls" else len(ood))


def test_a_registry_failing_for_a_moment_is_tried_again(tmp_path, monkeypatch, capsys):
    """A real command that fails as pip does when the index answers empty, once, then succeeds: the download goes
    through. One that keeps failing gives one AssetUnavailable naming the download and its last error."""
    import pytest

    from demo import assets

    monkeypatch.setattr(assets, "REGISTRY_WAITS_S", (0, 0))
    flaky = ["sh", "-c", "test -f tried && touch got || { touch tried; "
             "echo 'ERROR: No matching distribution found for x' >&2; exit 1; }"]
    assets._from_registry(flaky, tmp_path, "pip download x")
    assert (tmp_path / "got").is_file()
    printed = capsys.readouterr().out
    assert "pip download x failed (ERROR: No matching distribution found for x); trying again" in printed
    with pytest.raises(assets.AssetUnavailable, match=r"pip download y failed 3 times: ERROR: gone"):
        assets._from_registry(["sh", "-c", "echo 'ERROR: gone' >&2; exit 1"], tmp_path, "pip download y")
