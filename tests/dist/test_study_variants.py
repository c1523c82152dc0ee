"""`odyssey study` with variants: three domains × two variants (plain, and a remedy with 25 % replay from the
reference, Rho-1 selection and WSD), one child run each under the parent run. The remedy's runs take its sections and
the replay stream, the base model's losses of all their streams are scored in one pass before the first run, and the
report answers "adapt or not": every variant side by side per domain with the best on each axis, the leave-one-out fit
of Δppl on similarity (recomputed here from the rows), each run's token transitions, the same numbers in summary.json,
the parent run's metrics and tags, and the HTML."""
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import yaml

from tests import tiny

pytestmark = pytest.mark.slow


def test_variants_train_score_and_report_adapt_or_not(assets, tmp_path):
    from mlflow import MlflowClient

    from analysis.baseline import model_hash
    from study.remedies import loo_fit

    rng = np.random.default_rng(0)
    shuffled = [" ".join(rng.permutation(d.split())) for d in assets["prose_docs"]]
    src = {"prose": assets["prose_src"], "code": tiny.write_text_dir(tmp_path / "c", assets["code_docs"][:12]),
           "shuffled": tiny.write_text_dir(tmp_path / "s", shuffled)}
    cfg = tmp_path / "study.yaml"
    cfg.write_text(f"""
name: variants
out_dir: {tmp_path / 'study'}
model: {{path: {assets['model']}}}
reference: {{name: web, source: {tiny.write_text_dir(tmp_path / 'r', tiny.prose_docs(200, seed=7))}}}
prep: {{seq_len: 64, workers: 0}}
domains: [{', '.join(f'{{name: {n}, source: {p}}}' for n, p in src.items())}]
train: {{data: {{micro_batch: 4}}, optim: {{lr: 5.0e-3}}, run: {{max_steps: 2}}, eval: {{interval: 2, max_samples: 4}}, checkpoint: {{save_final: false}}}}
variants:
  - {{name: plain}}
  - {{name: remedy, replay: 0.25, train: {{loss: {{select_top: 0.5}}, optim: {{schedule: wsd, warmup_steps: 0}}}}}}
similarity: {{chunks: 16}}
""")
    # a process of its own, as a user runs it: a whole study in the test process would keep its MLflow stores' and
    # datasets' files open for the rest of the suite
    r = subprocess.run([sys.executable, "-m", "odyssey", "study", str(cfg)], capture_output=True, text=True,
                       timeout=1200)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = tmp_path / "study"
    keys = [f"{d}/{v}" for d in src for v in ("plain", "remedy")]

    remedy = yaml.safe_load((out / "configs" / "prose" / "remedy.yaml").read_text())
    assert remedy["loss"] == {"select_top": 0.5} and remedy["optim"]["schedule"] == "wsd"
    assert [s["name"] for s in remedy["data"]["streams"]] == ["prose", "web"] and remedy["data"]["mixing"] == "stratified"
    plain = yaml.safe_load((out / "configs" / "prose" / "plain.yaml").read_text())
    assert "loss" not in plain and [s["name"] for s in plain["data"]["streams"]] == ["prose"]
    key = model_hash(assets["model"])
    prepared = {p.parent.parent.parent.name for p in out.rglob(f"train/base_losses/{key}.npy")}
    assert prepared == {"prose", "code", "shuffled", "web"}  # the remedy's streams only
    # in one pass (one model load) before the first run
    assert r.stdout.count("base-model losses of") == 4 and r.stdout.count("base-model losses for") == 1
    assert r.stdout.index("base-model losses for") < r.stdout.index("prose/plain: training")

    summary = json.loads((out / "study" / "summary.json").read_text())
    rows = summary["rows"]
    assert [row["label"] for row in rows] == keys
    # the fit: Δppl on the primary similarity over the plain runs, recomputed from the rows
    primary = summary["primary"]
    plain_rows = [row for row in rows if row["variant"] == "plain"]
    fit = loo_fit([row["similarity"][primary] for row in plain_rows], [row["delta_ppl"] for row in plain_rows])
    [got] = summary["fit"].values()  # one model
    assert got["n"] == 3 and math.isfinite(got["loo_rmse"])
    for k in ("slope", "intercept", "loo_rmse", "loo_mae", "std"):
        assert got[k] == pytest.approx(fit[k]), k
    table = {t["domain"]: t for t in summary["variants"]}
    assert sorted(table) == sorted(src)
    for domain, t in table.items():
        assert sorted(t["variants"]) == ["plain", "remedy"]
        by_variant = {row["variant"]: row for row in rows if row["domain"] == domain}
        for axis, metric in (("domain", "delta_ppl"), ("forgetting", "forgetting")):
            assert t["best"][axis] == min(by_variant, key=lambda v: by_variant[v][metric])
        for v, row in by_variant.items():
            assert t["variants"][v]["forgetting"] == pytest.approx(row["forgetting"])
            assert t["variants"][v]["gap"]["depth"] >= 0
            assert t["variants"][v]["transitions"] == row["transitions"]  # the shares at the last eval
            assert sum(row["transitions"].values()) == pytest.approx(1) and set(row["transitions"]) == {
                "ll", "lh", "hl", "hh"}

    client = MlflowClient(f"sqlite:///{out}/mlflow.db")
    parent_id = json.loads((out / "study_state.json").read_text())["parent_run_id"]
    parent = client.get_run(parent_id).data
    assert parent.metrics["study/fit/loo_rmse"] == pytest.approx(got["loo_rmse"])
    for row in rows:
        assert parent.metrics[f"study/{row['label']}/forgetting"] == pytest.approx(row["forgetting"])
        assert parent.metrics[f"study/{row['label']}/delta_ppl"] == pytest.approx(row["ppl_last"] - row["ppl0"])
    model = rows[0]["model"]
    for domain, t in table.items():
        assert parent.tags[f"study.best.{model}.{domain}.domain"] == t["best"]["domain"]
        assert parent.tags[f"study.best.{model}.{domain}.forgetting"] == t["best"]["forgetting"]
    exp = client.get_experiment_by_name("variants")
    children = client.search_runs([exp.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}'")
    assert [c.info.status for c in children] == ["FINISHED"] * 6
    page = (out / "report" / "index.html").read_text()
    assert page.index("<h2>Adapt or not</h2>") < page.index("Per domain")
    assert "Does similarity alone predict the outcome?" in page and "leave-one-out error" in page
    assert page.count("L→H ") >= 6  # every run's token transitions
    assert "adapt or not:" in r.stdout and r.stdout.count(" remedy ") >= 3
