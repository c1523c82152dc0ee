"""`odyssey study` with two base models of different tokenizers over raw sources: each source prepared once per
tokenizer (and reused), similarity per model's own reference, one child run per model and domain under a parent run,
the analysis per model and pooled, a study that stopped mid-run continuing without redoing the finished runs, and the
--dry-run plan before and after the setup prepared the data. (The single-model form: the SLURM and demo tests.)"""
import json
import math
import os
import random
import signal
import subprocess
import sys

import pytest

from tests import tiny
from tests.cli import odyssey

pytestmark = pytest.mark.slow


def study(path, *args):
    return subprocess.run([sys.executable, "-m", "odyssey", "study", str(path), *args], capture_output=True,
                          text=True, timeout=1500)


def planned(path, *args):
    """A study command that trains nothing (a refusal, a dry run), in this process."""
    return odyssey(["study", path, *args])


def second_model(assets, root):
    """A tiny Llama with a SentencePiece tokenizer (BOS at every document), unlike the assets' byte-level BPE."""
    from transformers import AutoTokenizer

    tok = tiny.build_sentencepiece_tokenizer(root / "sp", assets["prose_docs"] + assets["code_docs"])
    tiny.build_tiny_llama(root / "sp", len(AutoTokenizer.from_pretrained(tok)), seed=1)
    return root / "sp"


def write_study(assets, tmp_path, train: str) -> str:
    rng = random.Random(1)
    shuffled = [" ".join(rng.sample(d.split(), len(d.split()))) for d in assets["prose_docs"]]
    src = {"prose": assets["prose_src"], "code": assets["code_src"],
           "shuffled": tiny.write_text_dir(tmp_path / "s", shuffled)}
    ref_a = tiny.write_text_dir(tmp_path / "ra", tiny.prose_docs(200, seed=7))
    ref_b = tiny.write_text_dir(tmp_path / "rb", tiny.prose_docs(200, seed=9))
    return f"""
name: two-models
out_dir: {tmp_path / 'study'}
models:
  - {{name: bpe, path: {assets['model']}, reference: {{name: web, source: {ref_a}}}}}
  - {{name: sp, path: {second_model(assets, tmp_path)}, reference: {{name: books, source: {ref_b}}}}}
prep: {{seq_len: 64, workers: 0}}
domains: [{', '.join(f'{{name: {n}, source: {p}}}' for n, p in src.items())}]
train: {train}
nproc: 1
similarity: {{chunks: 32}}
"""


TRAIN = "{data: {micro_batch: 2}, optim: {lr: 5.0e-3}, run: {max_steps: 4}, eval: {interval: 2, max_samples: 8}}"


def test_two_models_prepare_run_aggregate_and_restart(assets, tmp_path):
    text = write_study(assets, tmp_path, TRAIN)
    cfg = tmp_path / "study.yaml"
    cfg.write_text(text.replace(str(tmp_path / "s"), str(tmp_path / "missing")))
    r = planned(cfg)  # a bad source stops the study before any training, with one line
    error = f"odyssey: error: source not found: {tmp_path / 'missing'}"
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [error], r.stderr[-2000:]
    assert not (tmp_path / "study").exists()  # nothing prepared or tracked for a study that never started
    cfg.write_text(text)
    r = planned(cfg, "--dry-run")  # before the setup: memory and cost per model, the data not prepared yet
    assert r.returncode == 0, r.stderr[-3000:]
    assert "not prepared yet" not in r.stdout  # max_steps fixes each run's tokens: 4 steps x 2 x 64
    assert r.stdout.count(f"{4 * 2 * 64:>15,}") == 6 and "model states/device" in r.stdout

    # kill the whole study while the second run trains, then run it again
    p = subprocess.Popen([sys.executable, "-m", "odyssey", "study", str(cfg)], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, start_new_session=True)
    for line in p.stdout:
        if "[study] bpe/code: training" in line:
            os.killpg(p.pid, signal.SIGKILL)
            break
    p.wait(timeout=60)
    r = study(cfg)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "bpe/prose: finished earlier, skipped" in r.stdout and "bpe/code: training" in r.stdout
    assert "preparing" not in r.stdout  # every preparation of the first attempt is reused

    out = tmp_path / "study"
    prepared = sorted(p for p in (out / "prepared").iterdir() if p.is_dir())
    assert len(prepared) == 2  # one folder per tokenizer fingerprint
    bos = sorted(json.loads((d / "prose" / "manifest.json").read_text())["tokenizer"]["bos_id"] is not None
                 for d in prepared)
    assert bos == [False, True]  # the SentencePiece model adds BOS, the byte-level BPE does not
    names = [{p.name for p in d.iterdir() if p.is_dir()} for d in prepared]
    assert {"prose", "code", "shuffled"} <= names[0] & names[1] and {"web", "books"} <= names[0] | names[1]

    summary = json.loads((out / "study" / "summary.json").read_text())
    labels = [f"{m}/{d}" for m in ("bpe", "sp") for d in ("prose", "code", "shuffled")]
    assert [row["label"] for row in summary["rows"]] == labels
    assert sorted(summary["models"]) == ["bpe", "sp"]
    for name, analysis in summary["models"].items():
        assert math.isfinite(analysis["correlations"]["unigram_jsd"]["pearson_r"]) and len(analysis["findings"]) == 3
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{out}/mlflow.db")
    parent_id = json.loads((out / "study_state.json").read_text())["parent_run_id"]
    metrics = client.get_run(parent_id).data.metrics
    assert metrics["study/pearson_r"] == pytest.approx(summary["correlations"]["unigram_jsd"]["pearson_r"])
    assert metrics["study/sp/pearson_r"] == pytest.approx(
        summary["models"]["sp"]["correlations"]["unigram_jsd"]["pearson_r"])
    for row in summary["rows"]:
        assert metrics[f"similarity/{row['model']}/{row['domain']}/unigram_jsd"] == pytest.approx(
            row["similarity"]["unigram_jsd"])
        assert metrics[f"study/{row['label']}/delta_ppl"] == pytest.approx(row["ppl_last"] - row["ppl0"])
        assert len(row["top5"]) > 0
    exp = client.get_experiment_by_name("two-models")
    children = client.search_runs([exp.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}'")
    finished = sorted(f"{c.data.tags['model']}/{c.data.tags['domain']}" for c in children
                      if c.info.status == "FINISHED")
    assert finished == sorted(labels)
    page = (out / "report" / "index.html").read_text()
    assert "All 2 models, pooled (6 runs)" in page and "Model bpe" in page and "Model sp" in page
    # prose is the reference's own kind of text: closest by unigram JSD, for each model's tokenizer; code farthest
    for model in ("bpe", "sp"):
        jsd = {row["domain"]: row["similarity"]["unigram_jsd"] for row in summary["rows"] if row["model"] == model}
        assert jsd["prose"] < jsd["shuffled"] < jsd["code"]

    # one epoch per run instead: after the setup the plan counts each run's steps over its prepared train split
    cfg.write_text(text.replace("run: {max_steps: 4}", "run: {epochs: 1}"))
    r = planned(cfg, "--dry-run", "--world-size", "2", "--gpus-per-node", "2")
    assert r.returncode == 0, r.stderr[-3000:]
    for d in prepared:
        samples = json.loads((d / "code" / "manifest.json").read_text())["splits"]["train"]["samples"]
        steps = math.ceil(samples / 2) // 2  # per rank, over micro-batch 2
        assert f"{steps * 2 * 2 * 64:>15,} {steps:>9,}" in r.stdout
