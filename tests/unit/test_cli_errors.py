"""Bad inputs through the real `odyssey` command: one clear line on stderr, exit code != 0, nothing half-written."""
import subprocess
import sys

import pytest

from data_prep.prepare import PrepOptions, prepare_domain
from tests import tiny
from tests.cli import in_process, odyssey

ODYSSEY = [sys.executable, "-m", "odyssey"]


def run(args, cwd, fresh_process=False):
    """`odyssey ARGS` in `cwd` (in this process unless `fresh_process`) → (result, its `odyssey: error` lines)."""
    r = subprocess.run(ODYSSEY + args, capture_output=True, text=True, cwd=cwd, timeout=300) if fresh_process \
        else odyssey(args, cwd)
    errors = [line for line in r.stderr.splitlines() if line.startswith("odyssey: error")]
    return r, errors


def assert_one_line(r, errors, pattern):
    import re

    assert r.returncode != 0, r.stderr
    assert len(errors) == 1, r.stderr
    assert re.search(pattern, errors[0]), errors[0]


def test_prep_missing_source(tmp_path, assets):
    r, errors = run(["prep", str(tmp_path / "missing"), "--domain", "x", "--out", str(tmp_path / "out"),
                     "--tokenizer", str(assets["model"]), "--seq-len", "32"], tmp_path)
    assert_one_line(r, errors, r"source not found: .*missing")
    assert not (tmp_path / "out").exists()


def test_prep_empty_domain(tmp_path, assets):
    (tmp_path / "empty").mkdir()
    r, errors = run(["prep", str(tmp_path / "empty"), "--domain", "x", "--out", str(tmp_path / "out"),
                     "--tokenizer", str(assets["model"]), "--seq-len", "32"], tmp_path)
    assert_one_line(r, errors, r"domain 'x'.*no non-empty documents")
    assert list((tmp_path / "out").iterdir()) == []


def write_config(tmp_path, assets, domain_path, extra="", model=None):
    """A two-step training config on one domain; `model`: another model folder than the session's tiny Llama."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model: {{path: {model or assets['model']}}}\n"
                   f"data: {{streams: [{{name: d, path: {domain_path}}}]}}\n"
                   f"run: {{out_dir: {tmp_path / 'runs'}, max_steps: 2}}\n{extra}")
    return cfg


def test_train_config_typo(tmp_path, assets):
    cfg = write_config(tmp_path, assets, assets["domains"] / "prose", "optim: {lrr: 0.1}\n")
    r, errors = run(["train", str(cfg)], tmp_path)
    assert_one_line(r, errors, r"config key 'optim.lrr': unknown key")
    assert not (tmp_path / "runs").exists()


def test_train_shards_from_another_tokenizer(tmp_path, assets):
    other = tiny.build_tokenizer(tmp_path / "other_tok", tiny.prose_docs(100, seed=9), vocab_size=300)
    prepare_domain(assets["prose_src"], tmp_path / "domains", "prose", str(other), 32, PrepOptions(progress=False, workers=0))
    cfg = write_config(tmp_path, assets, tmp_path / "domains" / "prose")
    r, errors = run(["train", str(cfg)], tmp_path)
    assert_one_line(r, errors, r"shards were made with tokenizer .*re-run odyssey prep")


def test_train_missing_domain_and_model(tmp_path, assets):
    cfg = write_config(tmp_path, assets, tmp_path / "nowhere")
    r, errors = run(["train", str(cfg)], tmp_path)
    assert_one_line(r, errors, r"prepared domain not found: .*nowhere")
    cfg.write_text(cfg.read_text().replace(str(assets["model"]), str(tmp_path / "no_model")))
    r, errors = run(["train", str(cfg)], tmp_path)
    assert_one_line(r, errors, r"model.path not found")


@pytest.mark.parametrize("override", ["run.max_steps=0", "optim.lr=-1", "data.streams=[]"])
def test_train_bad_override_values(tmp_path, assets, override):
    cfg = write_config(tmp_path, assets, assets["domains"] / "prose")
    r, errors = run(["train", str(cfg), override], tmp_path)
    assert_one_line(r, errors, r"config key '" + override.split("=")[0].split(".")[0])


def test_folders_named_like_our_packages_in_the_working_directory_do_not_shadow_them(tmp_path):
    """A study's output folder is often called study/ (with similarity/ inside), next to analysis/ notebooks: run
    from there, `python -m odyssey` must still import its own packages, and pass that on to what it starts."""
    for folder in ("study/similarity", "analysis", "trainer"):
        (tmp_path / folder).mkdir(parents=True)
    r, errors = run(["study", "missing.yaml", "--list"], tmp_path, fresh_process=True)
    assert_one_line(r, errors, r"study file not found: missing.yaml")


@pytest.mark.parametrize("option", ["--nproc 2", "--dry-run", "--master-port 1234", "--world-size 8"])
def test_a_rank_module_refuses_what_only_the_command_does(tmp_path, option):
    """`python -m trainer.train` (what launchers start on each rank) reads `odyssey train`'s own parser, and refuses,
    in argparse's usage line, the options that start ranks or plan them."""
    from trainer.train import main

    r = in_process(main, ["run.yaml", *option.split()], tmp_path)
    assert r.returncode == 2 and f"{option.split()[0]} is for `odyssey train`" in r.stderr, r.stderr
    assert r.stderr.startswith("usage: odyssey train")
