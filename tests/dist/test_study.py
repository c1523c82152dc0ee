"""`odyssey study`: similarity, one child run per domain under a parent run, aggregation and report; a study that
stopped at a failing domain continues from there without redoing the finished ones."""
import json
import os
import random
import signal
import subprocess
import sys

import pytest

from data_prep.prepare import PrepOptions, prepare_domain
from tests import tiny

pytestmark = pytest.mark.slow


def study(path):
    return subprocess.run([sys.executable, "-m", "odyssey", "study", str(path)], capture_output=True, text=True,
                          timeout=1500)


def test_study_runs_aggregates_and_restarts(assets, tmp_path):
    opts = PrepOptions(progress=False, workers=0)
    rng = random.Random(1)
    shuffled = [" ".join(rng.sample(d.split(), len(d.split()))) for d in assets["prose_docs"]]
    prepare_domain(tiny.write_text_dir(tmp_path / "s", shuffled), tmp_path / "d", "shuffled", str(assets["model"]),
                   64, opts)
    prepare_domain(tiny.write_text_dir(tmp_path / "r", tiny.prose_docs(200, seed=7)), tmp_path / "d", "ref",
                   str(assets["model"]), 64, opts)
    doms = {"prose": assets["domains"] / "prose", "code": assets["domains"] / "code", "shuffled": tmp_path / "d" /
            "shuffled"}
    text = f"""
name: tiny-study
out_dir: {tmp_path / 'study'}
model: {{path: {assets['model']}}}
reference: {{name: ref, path: {tmp_path / 'd' / 'ref'}}}
domains: [{', '.join(f'{{name: {n}, path: {p}}}' for n, p in doms.items())}]
train: {{data: {{micro_batch: 2}}, optim: {{lr: 5.0e-3}}, run: {{max_steps: 4}}, eval: {{interval: 2, max_samples: 8}}}}
nproc: 1
similarity: {{chunks: 32}}
"""
    cfg = tmp_path / "study.yaml"
    cfg.write_text(text.replace(str(tmp_path / "d" / "shuffled"), str(tmp_path / "missing")))
    r = study(cfg)  # a bad domain path stops the study before anything runs, with one line
    assert r.returncode == 2 and "prepared domain not found" in r.stderr, r.stderr[-2000:]
    cfg.write_text(text)
    # kill the whole study while the second domain trains, then run it again
    p = subprocess.Popen([sys.executable, "-m", "odyssey", "study", str(cfg)], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, start_new_session=True)
    for line in p.stdout:
        if "[study] code: training" in line:
            os.killpg(p.pid, signal.SIGKILL)
            break
    p.wait(timeout=60)
    r = study(cfg)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "prose: finished earlier, skipped" in r.stdout and "code: training" in r.stdout

    out = tmp_path / "study"
    summary = json.loads((out / "study" / "summary.json").read_text())
    assert [row["domain"] for row in summary["rows"]] == ["prose", "code", "shuffled"]
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{out}/mlflow.db")
    exp = client.get_experiment_by_name("tiny-study")
    parent_id = json.loads((out / "study_state.json").read_text())["parent_run_id"]
    parent = client.get_run(parent_id)
    for key in ("study/pearson_r", "study/pearson_p", "study/spearman_rho", "study/spearman_p"):
        assert key in parent.data.metrics
    assert parent.data.metrics["study/pearson_r"] == pytest.approx(summary["correlations"]["unigram_jsd"]["pearson_r"])
    for row in summary["rows"]:
        assert parent.data.metrics[f"similarity/{row['domain']}/unigram_jsd"] == pytest.approx(
            row["similarity"]["unigram_jsd"])
        assert row["delta_ppl"] == pytest.approx(row["ppl_last"] - row["ppl0"])
        assert len(row["top5"]) > 0
    children = client.search_runs([exp.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}'")
    finished = [c for c in children if c.info.status == "FINISHED"]
    assert sorted(c.data.tags["domain"] for c in finished) == ["code", "prose", "shuffled"]
    arts = {a.path for d in ("study", "report", "similarity") for a in client.list_artifacts(parent_id, d)}
    assert {"study/scatter.png", "report/index.html", "similarity/similarity.json"} <= arts
    page = (out / "report" / "index.html").read_text()
    assert page.count("data:image/png;base64,") >= 2 + 2 * 3  # scatter, heatmap, and per run: curves + tokens
    # prose is the reference's own kind of text: closest by unigram JSD; code is farthest
    jsd = {row["domain"]: row["similarity"]["unigram_jsd"] for row in summary["rows"]}
    assert jsd["prose"] < jsd["shuffled"] < jsd["code"]
