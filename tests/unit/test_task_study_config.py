"""The task study file (`kind: tasks`): its refusals are one line each, the runs are the tasks and their FTICL
variants, the study's preparation defaults fill what a task left unset, and `odyssey study` dispatches on `kind`."""

import pytest

from data_prep.config import ConfigError, validate
from study.task_config import TaskStudyCfg
from tests.cli import odyssey


def tree(**over):
    base = {"kind": "tasks", "name": "s", "out_dir": "/tmp/s", "model": {"path": "/m"},
            "prep": {"max_len": 256},
            "tasks": [{"name": "gen", "source": "g.jsonl", "kind": "generation", "template": "{input} =>"},
                      {"name": "cls", "source": "c.jsonl", "kind": "classification", "template": "{input} is",
                       "label_words": {"a": " yes", "b": " no"}, "max_len": 64}],
            "ood": [{"name": "gen_ood", "of": "gen", "source": "o/"}], "fticl": [2]}
    return {**base, **over}


def test_runs_are_each_task_and_its_fticl_variants_with_the_studys_defaults():
    study = validate(TaskStudyCfg, tree(), "study")
    assert study.run_keys == ["gen", "gen-fticl2", "cls", "cls-fticl2"]
    by_key = {key: (task, k) for key, task, k in study.variants()}
    assert by_key["gen-fticl2"][0].demos == 2 and by_key["gen-fticl2"][0].name == "gen-fticl2"
    assert by_key["gen"][0].max_len == 256 and by_key["cls"][0].max_len == 64  # the task's own value wins
    ood = study.ood_cfg(study.ood[0])
    assert (ood.name, ood.source, ood.template, ood.max_len) == ("gen_ood", "o/", "{input} =>", 256)


@pytest.mark.parametrize("change, message", [
    ({"fticl": [0]}, "fticl: each k must be > 0"),
    ({"ood": [{"name": "x", "of": "nope", "source": "o/"}]}, "ood set 'x': no task named 'nope'"),
    ({"ood": [{"name": "gen", "of": "gen", "source": "o/"}]}, "tasks and ood sets need distinct names"),
])
def test_refusals_are_one_line(change, message):
    with pytest.raises(ConfigError, match=message):
        validate(TaskStudyCfg, tree(**change), "study")
    bad = tree()
    bad["tasks"][0]["demos"] = 1
    with pytest.raises(ConfigError, match="demos are set by the study"):
        validate(TaskStudyCfg, bad, "study")


def test_the_cli_dispatches_on_kind(tmp_path):
    import yaml

    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(tree()))
    r = odyssey(["study", path, "--list"])
    assert r.returncode == 0 and r.stdout.split() == ["gen", "gen-fticl2", "cls", "cls-fticl2"]
    r = odyssey(["study", path, "--dry-run"])
    assert r.returncode == 2 and "--dry-run plans continued-pretraining studies" in r.stderr.strip().splitlines()[-1]


def test_matrix_refusals_are_one_line():
    from trainer.task_matrix import MatrixCfg

    base = {"out": "/tmp/m", "models": [{"name": "base", "path": "/m"}, {"name": "ft", "path": "/r", "task": "t"}],
            "tests": [{"name": "t", "path": "/t"}]}
    assert validate(MatrixCfg, base, "evaluate-tasks").shots == [0]
    for change, message in (({"shots": []}, "shots"), ({"shots": [-1]}, "shots must be >= 0"),
                            ({"models": base["models"] + [{"name": "b2", "path": "/m2"}]}, "one base model"),
                            ({"tests": base["tests"] * 2}, "tests: duplicate names")):
        with pytest.raises(ConfigError, match=message):
            validate(MatrixCfg, {**base, **change}, "evaluate-tasks")
