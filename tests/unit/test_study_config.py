"""The study file with several models: what it accepts and refuses, how runs are named, and how raw sources are
prepared once per tokenizer and prepared again only when what they depend on changes."""
import shutil

import pytest

from data_prep.config import ConfigError, validate
from data_prep.manifest import tokenizer_fingerprint
from study.config import StudyCfg
from study.prep import model_paths, planned_paths
from tests import tiny


def study(**over):
    tree = {"name": "s", "out_dir": "/tmp/s", "models": [{"name": "a", "path": "/m/a"}, {"name": "b", "path": "/m/b"}],
            "reference": {"name": "ref", "path": "/d/ref"},
            "domains": [{"name": "x", "path": "/d/x"}, {"name": "y", "path": "/d/y"}]}
    tree.update(over)
    return validate(StudyCfg, tree, "study")


@pytest.mark.parametrize("over, message", [
    ({"model": {"path": "/m/c"}}, "either model"),
    ({"reference": None}, "model 'a' has no reference"),
    ({"domains": [{"name": "x", "source": "/raw/x"}, {"name": "y", "path": "/d/y"}]}, "prep.seq_len is required"),
    ({"domains": [{"name": "x", "path": "/d/x", "doc_boundary": "line"}, {"name": "y", "path": "/d/y"}]},
     "doc_boundary applies to a raw source"),
    ({"domains": [{"name": "x", "path": "/d/x", "source": "/raw/x"}, {"name": "y", "path": "/d/y"}]}, "not both"),
    ({"prep": {"tokenizer": "/t"}}, "prep.tokenizer is set by the study"),
    ({"models": [{"name": "a", "path": "/m/a"}, {"name": "a", "path": "/m/b"}]}, "distinct names"),
    ({"models": [{"name": "a/b", "path": "/m/a"}]}, "models.0.name"),
    ({"domains": [{"name": "ref", "path": "/d/x"}, {"name": "y", "path": "/d/y"}]}, "name of a study domain"),
])
def test_bad_study_files_are_refused_with_the_reason(over, message):
    with pytest.raises(ConfigError, match=message):
        study(**over)


def test_runs_are_model_slash_domain_only_with_several_models():
    many = study(models=[{"name": "a", "path": "/m/a"}, {"name": "b", "path": "/m/b",
                                                        "reference": {"name": "books", "path": "/d/books"}}])
    assert many.run_keys == ["a/x", "a/y", "b/x", "b/y"]
    assert [m.reference.name for m in many.model_list] == ["ref", "books"]
    one = study(models=None, model={"path": "/models/llama 7b", "dtype": "bf16"})
    assert one.run_keys == ["x", "y"] and one.model_list[0].name == "llama_7b"
    assert one.model_list[0].dtype == "bf16" and one.model_list[0].reference.name == "ref"


def test_sources_are_prepared_once_per_spec_and_again_when_it_changes(tmp_path, capsys):
    texts = tiny.prose_docs(60)
    tok = tiny.build_tokenizer(tmp_path / "tok", texts, vocab_size=300)
    src = tiny.write_text_dir(tmp_path / "raw", texts)
    def cfg(**prep):
        return study(out_dir=str(tmp_path / "s"), prep={"seq_len": 32, "workers": 0, **prep},
                     models=[{"name": "a", "path": str(tok)}], reference={"name": "ref", "source": str(src)},
                     domains=[{"name": "x", "source": str(src)}, {"name": "y", "path": "/d/y"}])

    def said() -> list[str]:  # the study's console lines since the last call
        return [line.removeprefix("[study] ") for line in capsys.readouterr().out.splitlines()]

    s = cfg()
    paths = model_paths(s, s.model_list[0])
    lines = said()
    assert paths == planned_paths(s, s.model_list[0], tokenizer_fingerprint(tokenizer_of(tok)))
    assert paths["y"].as_posix() == "/d/y"
    assert paths["x"].parent == paths["ref"].parent and paths["x"].parent.parent == tmp_path / "s" / "prepared"
    assert sum(line.startswith("preparing") for line in lines) == 2
    model_paths(s, s.model_list[0])
    assert said() == []  # the same spec: reused
    shutil.copytree(tok, tmp_path / "same_tok")  # another model folder with the same tokenizer (GPT-2 S and L)
    twin = s.model_list[0].model_copy(update={"name": "b", "path": str(tmp_path / "same_tok")})
    assert model_paths(s, twin) == paths and said() == []  # shared, not prepared again
    s = cfg(seq_len=16)
    model_paths(s, s.model_list[0])
    assert sum(line.startswith("preparing") for line in said()) == 2  # a new seq_len: prepared again


def tokenizer_of(path):
    from data_prep.tokenize import load_tokenizer

    return load_tokenizer(str(path))


def test_variants_name_the_runs_and_override_the_study_s_train_sections():
    s = study(models=None, model={"path": "/m/a"}, train={"optim": {"lr": 1e-4, "warmup_steps": 5}},
              variants=[{"name": "plain"}, {"name": "wsd", "train": {"optim": {"schedule": "wsd"}}},
                        {"name": "replay", "replay": 0.25}])
    assert s.run_keys == ["x/plain", "x/wsd", "x/replay", "y/plain", "y/wsd", "y/replay"]
    assert s.train_tree("wsd")["optim"] == {"lr": 1e-4, "warmup_steps": 5, "schedule": "wsd"}
    assert s.train_tree("plain")["optim"] == {"lr": 1e-4, "warmup_steps": 5}
    assert study(models=[{"name": "a", "path": "/m/a"}], variants=[{"name": "v"}]).run_keys == ["a/x/v", "a/y/v"]


@pytest.mark.parametrize("variants, message", [
    ([{"name": "r", "replay": 1.0}], "variants.0.replay"),
    ([{"name": "r", "replay": -0.1}], "variants.0.replay"),
    ([{"name": "t", "train": {"optim": {"lrr": 1}}}], "variants.0.train.optim.lrr': unknown key"),
    ([{"name": "t", "train": {"run": {"name": "x"}}}], "run.name is set by the study"),
    ([{"name": "a"}, {"name": "a"}], "distinct names"),
    ([{"name": "a/b"}], "variants.0.name"),
])
def test_bad_variants_are_refused(variants, message):
    with pytest.raises(ConfigError, match=message):
        study(variants=variants)


def test_a_replay_variant_trains_on_the_reference_beside_the_domain(tmp_path):
    from study.runs import child_config

    s = study(models=None, model={"path": "/m/a"}, out_dir=str(tmp_path), train={"data": {"micro_batch": 2}},
              nproc=2, variants=[{"name": "plain"}, {"name": "r", "replay": 0.25}])
    paths = {"x": "/d/x", "y": "/d/y", "ref": "/d/ref"}
    tree = child_config(s, s.model_list[0], "x", paths, "parent", "file:///dev/null", "r")
    assert tree["data"]["streams"] == [{"name": "x", "path": "/d/x", "proportion": 0.75},
                                       {"name": "ref", "path": "/d/ref", "proportion": 0.25}]
    assert tree["data"]["mixing"] == "stratified"  # 1 sample of every global batch of 4
    assert tree["run"] == {"out_dir": str(tmp_path / "runs" / "x"), "name": "r"}
    assert tree["tracking"]["run_name"] == "x/r" and tree["tracking"]["tags"]["variant"] == "r"
    plain = child_config(s, s.model_list[0], "x", paths, "parent", "file:///dev/null", "plain")
    assert plain["data"]["streams"] == [{"name": "x", "path": "/d/x"}]


def test_a_replay_share_the_global_batch_cannot_hold_is_one_line(tmp_path):
    from study.runs import child_config

    s = study(models=None, model={"path": "/m/a"}, out_dir=str(tmp_path), variants=[{"name": "r", "replay": 0.25}])
    with pytest.raises(ConfigError, match=r"stream 'x' \(75.0%\) gets no sample of the global batch of 1 "
                                          r"\(data.micro_batch 1 x 1 rank\(s\)\)"):
        child_config(s, s.model_list[0], "x", {"x": "/d/x", "y": "/d/y", "ref": "/d/ref"}, "p", "file:///dev/null",
                     "r")


def test_the_paper_study_s_commented_variants_are_a_valid_study(tmp_path):
    """studies/adaptation_odyssey.yaml ships its remedies commented out; uncommented they load as they stand."""
    from pathlib import Path

    from study.config import load_study

    lines, on = [], False
    for line in (Path(__file__).parents[2] / "studies" / "adaptation_odyssey.yaml").read_text().splitlines():
        on = on or line.startswith("# variants:")
        lines.append(line[2:] if on and line.startswith(("# variants:", "#   - ")) else line)
    (tmp_path / "s.yaml").write_text("\n".join(lines) + "\n")
    s = load_study(tmp_path / "s.yaml")
    assert [v.name for v in s.variants] == ["plain", "replay25", "rewarm_wsd", "skip_uninformative"]
    assert len(s.run_keys) == 400 and s.train.eval.log_spaced == 8
