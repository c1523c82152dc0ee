import json

import pytest

from trainer.config import ConfigError, config_from_dict, load_config
from trainer.engine import fill_ds_config

BASE = {"model": {"path": "m"}, "data": {"streams": [{"name": "a", "path": "d/a"}], "micro_batch": 2}}


def write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_typo_names_the_key(tmp_path):
    p = write(tmp_path, "model: {path: m}\ndata: {streams: [{name: a, path: x}]}\noptim: {lrr: 0.1}\n")
    with pytest.raises(ConfigError, match=r"config key 'optim.lrr': unknown key"):
        load_config(p)


def test_wrong_type_names_the_key(tmp_path):
    p = write(tmp_path, "model: {path: m}\ndata: {streams: [{name: a, path: x}]}\nrun: {max_steps: many}\n")
    with pytest.raises(ConfigError, match=r"config key 'run.max_steps'"):
        load_config(p)


def test_missing_required_section(tmp_path):
    with pytest.raises(ConfigError, match=r"config key 'data': Field required"):
        load_config(write(tmp_path, "model: {path: m}\n"))


def test_overrides_are_typed_and_validated(tmp_path):
    p = write(tmp_path, "model: {path: m}\ndata: {streams: [{name: a, path: x}]}\n")
    cfg = load_config(p, ["optim.lr=3e-4", "run.max_steps=7", "eval.domains=[{name: b, path: y}]"])
    assert cfg.optim.lr == 3e-4 and cfg.run.max_steps == 7
    assert [d.name for d in cfg.eval_domains()] == ["a", "b"]
    with pytest.raises(ConfigError, match="optim.nope"):
        load_config(p, ["optim.nope=1"])
    with pytest.raises(ConfigError, match="not of the form"):
        load_config(p, ["optim.lr"])


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "model: [unclosed\n"))


def test_duplicate_stream_names():
    bad = {**BASE, "data": {"streams": [{"name": "a", "path": "x"}, {"name": "a", "path": "y"}]}}
    with pytest.raises(ConfigError, match="duplicate"):
        config_from_dict(bad)


def test_ds_config_autos_filled():
    cfg = config_from_dict({**BASE, "optim": {"lr": 2e-4, "accumulation": 3, "grad_clip": 0.5}})
    ds = fill_ds_config(cfg, world_size=4)
    assert ds["train_micro_batch_size_per_gpu"] == 2
    assert ds["gradient_accumulation_steps"] == 3
    assert ds["train_batch_size"] == 2 * 3 * 4
    assert ds["gradient_clipping"] == 0.5
    assert ds["optimizer"]["params"]["lr"] == 2e-4
    assert ds["zero_optimization"]["stage"] == 3
    assert "reduce_bucket_size" not in ds["zero_optimization"]  # "auto": DeepSpeed's own default
    assert "scheduler" not in ds
    assert "auto" not in json.dumps(ds)


def test_ds_config_conflict_is_reported(tmp_path):
    user = tmp_path / "mine.json"
    user.write_text(json.dumps({"train_micro_batch_size_per_gpu": 8, "gradient_clipping": "auto",
                                "zero_optimization": {"stage": 3}}))
    cfg = config_from_dict({**BASE, "deepspeed": {"config": str(user)}})
    with pytest.raises(ConfigError, match=r"train_micro_batch_size_per_gpu=8 \(config says 2\)"):
        fill_ds_config(cfg, world_size=1)


def test_lr_schedule_shapes():
    from trainer.engine import LrSchedule

    cos = LrSchedule("cosine", warmup=2, total=10, min_ratio=0.1)
    assert cos(0) == pytest.approx(1 / 3) and cos(1) == pytest.approx(2 / 3)
    assert cos(2) == pytest.approx(1.0) and cos(10) == pytest.approx(0.1)
    lin = LrSchedule("linear", warmup=0, total=10, min_ratio=0.0)
    assert lin(5) == pytest.approx(0.5)
    assert LrSchedule("constant", warmup=0, total=10, min_ratio=0.0)(7) == 1.0


def test_wsd_schedule_holds_the_peak_then_decays_over_its_fraction():
    from trainer.engine import LrSchedule

    wsd = LrSchedule("wsd", warmup=2, total=20, min_ratio=0.0, decay_fraction=0.25)  # decays over steps 15..20
    assert wsd(0) == pytest.approx(1 / 3) and wsd(2) == 1.0 and wsd(15) == 1.0
    assert wsd(16) == pytest.approx(0.8) and wsd(18) == pytest.approx(0.4) and wsd(20) == pytest.approx(0.0)
    assert LrSchedule("wsd", warmup=0, total=10, min_ratio=0.1, decay_fraction=1.0)(5) == pytest.approx(0.55)
