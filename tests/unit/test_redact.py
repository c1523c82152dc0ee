"""Secrets by name and by value: which environment variables and config keys count, URI credentials, the env file a
launcher hands its ranks, and MLflow params of a config."""
import json
import os
import stat

import pytest
import yaml

from data_prep.redact import (MASK, is_secret_key, is_secret_name, load_env_file, redact, redact_tree, secret_values,
                              split_userinfo, write_env_file)
from trainer.tracking import params_for


def test_secret_names_go_by_words():
    for name in ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "HF_TOKEN", "MLFLOW_TRACKING_PASSWORD", "api-key"):
        assert is_secret_name(name), name
    for name in ("TOKENIZERS_PARALLELISM", "PYTHONHASHSEED", "KEYBOARD", "MONKEY_PATCH", "SSH_AUTH_SOCK"):
        assert not is_secret_name(name), name
    assert is_secret_key("tracking.tags.api_key") and is_secret_key("hf_token")
    assert not is_secret_key("eval.token_stats") and not is_secret_key("model.tokenizer")


def test_redact_masks_values_and_uri_userinfo():
    text = "uri https://bob:pa55word@mlflow.example:5000/x key wJalrXUtnFEMI/K7MDENG s3://AK:SK@bucket/p x=1"
    out = redact(text, secrets=["wJalrXUtnFEMI/K7MDENG"])
    assert "pa55word" not in out and "bob" not in out and "wJalrXUtnFEMI" not in out and "AK:SK" not in out
    assert f"https://{MASK}@mlflow.example:5000/x" in out and f"s3://{MASK}@bucket/p" in out and "x=1" in out
    assert split_userinfo("http://u:p@127.0.0.1:5000/a") == ("http://127.0.0.1:5000/a", "u", "p")
    assert split_userinfo("sqlite:////tmp/x/mlflow.db") == ("sqlite:////tmp/x/mlflow.db", None, None)


def test_env_file_is_private_and_carries_uri_credentials(tmp_path, monkeypatch):
    env = {"HF_TOKEN": "hf_abcdef123", "AWS_SECRET_ACCESS_KEY": "s3cr3t/value", "PATH": "/usr/bin",
           "MLFLOW_TRACKING_URI": "http://alice:hunter22@127.0.0.1:5000", "HTTPS_PROXY": "http://p:pr0xy@gw:3128"}
    path = tmp_path / "secrets.json"
    lines = write_env_file(path, env)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    saved = json.loads(path.read_text())
    assert saved == {"HF_TOKEN": "hf_abcdef123", "AWS_SECRET_ACCESS_KEY": "s3cr3t/value",
                     "HTTPS_PROXY": "http://p:pr0xy@gw:3128",
                     "MLFLOW_TRACKING_USERNAME": "alice", "MLFLOW_TRACKING_PASSWORD": "hunter22"}
    assert lines.splitlines() == ["unset AWS_SECRET_ACCESS_KEY HF_TOKEN HTTPS_PROXY MLFLOW_TRACKING_PASSWORD "
                                  "MLFLOW_TRACKING_USERNAME", "export MLFLOW_TRACKING_URI=http://127.0.0.1:5000"]
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "already-set")
    load_env_file(str(path))
    assert os.environ["HF_TOKEN"] == "hf_abcdef123" and os.environ["AWS_SECRET_ACCESS_KEY"] == "already-set"


def test_params_mask_secret_keys_and_values_but_not_token_stats(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_zzzzzz999")
    tree = {"eval": {"token_stats": True, "top_k": 20}, "tracking": {"uri": "https://u:pw9876@host/",
            "tags": {"api_key": "abc123", "note": "token hf_zzzzzz999 inside"}}, "model": {"tokenizer": "/m"}}
    params = params_for(tree)
    assert params["eval.token_stats"] == "True" and params["model.tokenizer"] == "/m"
    assert params["tracking.tags.api_key"] == MASK
    assert "pw9876" not in params["tracking.uri"] and "hf_zzzzzz999" not in params["tracking.tags.note"]


def test_a_tracking_uri_with_credentials_is_used_without_them(tmp_path, monkeypatch):
    from trainer.tracking import Tracker

    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    tracker = Tracker(tmp_path, "x", enabled=False, uri="https://alice:s3cr3t-pw@mlflow.example:443/")
    assert tracker.uri == "https://mlflow.example:443/"  # what is printed and written into study child configs
    assert os.environ["MLFLOW_TRACKING_USERNAME"] == "alice" and os.environ["MLFLOW_TRACKING_PASSWORD"] == "s3cr3t-pw"


def test_a_token_in_the_user_part_is_masked_everywhere_and_yaml_stays_valid(monkeypatch, tmp_path):
    monkeypatch.setenv("S3_ENDPOINT_URL", "https://ghp_t0kenvalue42@s3.example")
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "tok-as-user-77")
    assert {"ghp_t0kenvalue42", "tok-as-user-77"} <= set(secret_values())
    assert redact("pulled with ghp_t0kenvalue42 as tok-as-user-77") == f"pulled with {MASK} as {MASK}"
    tree = {"hf_token": "abc-secret", "tags": {"note": "user tok-as-user-77"}, "n": 3, "l": ["ghp_t0kenvalue42"]}
    assert yaml.safe_load(yaml.safe_dump(redact_tree(tree))) == {"hf_token": MASK, "tags": {"note": f"user {MASK}"},
                                                                "n": 3, "l": [MASK]}
    with pytest.raises(SystemExit) as stop:
        load_env_file(str(tmp_path / "gone.json"))  # a node that cannot see the launch folder
    assert stop.value.code == 2


def test_a_config_uri_without_credentials_takes_them_from_the_environment(tmp_path, monkeypatch):
    from trainer.tracking import Tracker

    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://carol:pw-4567@mlflow.example/")
    Tracker(tmp_path, "x", enabled=False, uri="https://other.example/")
    assert "MLFLOW_TRACKING_PASSWORD" not in os.environ  # another server gets nothing
    Tracker(tmp_path, "x", enabled=False, uri="https://mlflow.example/")  # a study child's config on SLURM
    assert os.environ["MLFLOW_TRACKING_USERNAME"] == "carol" and os.environ["MLFLOW_TRACKING_PASSWORD"] == "pw-4567"
