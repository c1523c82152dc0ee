"""`odyssey finetune`: the pretraining Trainer on task data (odyssey prep --task) under 2-rank ZeRO-3. The loss is the
target's only: the eval scores exactly the test split's target tokens, token statistics leave prompts and padding
out, training rows pack several examples (attention kept inside each), a halted run resumes to the end with the losses of an uninterrupted run, the eval points log the task metric
and the mean |Δw| to the base (ZeRO-3 partitions, reloaded on resume), and packed pretraining data is refused with
one line."""
import json
import subprocess
import sys

import numpy as np
import pytest

from data_prep.config import validate
from data_prep.tasks import TaskCfg, prepare_task
from tests import tiny
from tests.cli import odyssey
from tests.dist.helpers import client_and_run, free_port, history, run

pytestmark = pytest.mark.slow


def test_finetune_scores_targets_only_and_resumes(assets, tmp_path):
    docs = tiny.prose_docs(120, seed=11)
    src = tmp_path / "task.jsonl"
    src.write_text("".join(json.dumps({"input": d, "output": " " + d.split()[0]}) + "\n" for d in docs))
    cfg = validate(TaskCfg, {"name": "first_word", "source": str(src), "kind": "generation", "max_len": 64,
                             "template": "Passage: {input}\nFirst word:", "test": 0.2, "val": 0.0,
                             "pack": True}, "task")
    manifest = prepare_task(cfg, tmp_path / "tasks", str(assets["model"]))
    run_cfg = tmp_path / "ft.yaml"
    run_cfg.write_text(f"""
model: {{path: {assets['model']}}}
data: {{streams: [{{name: first_word, path: {tmp_path / 'tasks' / 'first_word'}}}], micro_batch: 4}}
optim: {{lr: 3.0e-3, warmup_steps: 0, schedule: constant}}
run: {{out_dir: {tmp_path}, name: ft, max_steps: 6, halt_at_step: 3}}
eval: {{interval: 3, micro_batch: 8}}
task: {{examples: 10, max_new_tokens: 8}}
checkpoint: {{interval: 3}}
tracking: {{experiment: test}}
""")
    assert "halted at step 3" in run(run_cfg, nproc=2).stdout
    assert "done: 6 steps" in run(run_cfg, "--resume", "auto", "run.halt_at_step=null", nproc=2).stdout
    client, runs = client_and_run(tmp_path / "ft")
    run_id = runs[0].info.run_id
    losses = history(client, run_id, "eval/first_word/loss")
    assert sorted(losses) == [0, 3, 6] and losses[6] < losses[0] and np.isfinite(list(losses.values())).all()
    straight = run_cfg.parent / "straight.yaml"
    straight.write_text(run_cfg.read_text().replace("name: ft,", "name: straight,").replace(", halt_at_step: 3", ""))
    run(straight, nproc=2)
    client2, runs2 = client_and_run(tmp_path / "straight")
    for key in ("train/loss", "eval/first_word/loss", "weights/mean_abs_delta"):
        resumed, uninterrupted = history(client, run_id, key), history(client2, runs2[0].info.run_id, key)
        assert resumed.keys() == uninterrupted.keys() and resumed == pytest.approx(uninterrupted, rel=1e-5), key
    rouge = history(client, run_id, "task/first_word/rouge_l")
    delta = history(client, run_id, "weights/mean_abs_delta")
    assert sorted(rouge) == [0, 3, 6] and all(0 <= v <= 1 for v in rouge.values())
    assert sorted(delta) == [0, 3, 6] and 0 == delta[0] < delta[3] < delta[6]  # Adam at a constant LR moves on
    assert sorted(p.name for p in (tmp_path / "ft" / "base_weights").iterdir()) == ["rank0_of2.pt", "rank1_of2.pt"]
    tokens = json.loads((tmp_path / "ft" / "tokens" / "first_word" / "step_6.json").read_text())
    assert tokens["tokens"] == manifest["splits"]["test"]["target_tokens"]  # the targets and their EOS, nothing else

    check_task_matrix(assets, tmp_path, cfg)

    lm_cfg = tmp_path / "lm.yaml"
    lm_cfg.write_text(run_cfg.read_text().replace(str(tmp_path / "tasks" / "first_word"),
                                                  str(assets["domains"] / "prose")).replace("name: ft,", "name: lm,"))
    r = odyssey(["finetune", lm_cfg, "--nproc", "2"])
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith(
        "odyssey: error: odyssey finetune trains on task data"), r.stderr[-2000:]


def check_task_matrix(assets, tmp_path, gen_cfg):
    """`odyssey evaluate-tasks` over base × the fine-tuned run × (in-domain, out-of-domain, cross-task) × 0/1-shot
    on 2 ranks with ZeRO-3 inference: the matrix lands in MLflow; the same cells scored by one plain process agree; a
    rerun scores nothing again; too many shots for a pool is one line."""
    from mlflow import MlflowClient

    tasks = tmp_path / "tasks"
    ood_src = tmp_path / "ood" / "test.jsonl"
    ood_src.parent.mkdir()
    ood_src.write_text("".join(json.dumps({"input": d, "output": " " + d.split()[0]}) + "\n"
                               for d in assets["code_docs"][:12]))
    prepare_task(gen_cfg.model_copy(update={"name": "first_word_ood", "source": str(ood_src.parent)}), tasks,
                 str(assets["model"]))
    cls_src = tmp_path / "cls.jsonl"
    docs = [(d, "prose") for d in tiny.prose_docs(20, seed=12)] + [(d, "code") for d in assets["code_docs"][:20]]
    cls_src.write_text("".join(json.dumps({"input": d, "label": y}) + "\n" for d, y in docs))
    prepare_task(validate(TaskCfg, {"name": "kind", "source": str(cls_src), "kind": "classification", "max_len": 64,
                                    "template": "Text: {input}\nKind:", "test": 0.3, "val": 0.0,
                                    "label_words": {"prose": " story", "code": " program listing"}}, "task"),
                 tasks, str(assets["model"]))
    matrix = tmp_path / "matrix.yaml"
    body = f"""
models:
  - {{name: base, path: {assets['model']}}}
  - {{name: ft, path: {tmp_path / 'ft'}, task: first_word}}
tests:
  - {{name: first_word, path: {tasks / 'first_word'}}}
  - {{name: first_word_ood, path: {tasks / 'first_word_ood'}, task: first_word, ood: true,
     demos_from: {tasks / 'first_word'}}}
  - {{name: kind, path: {tasks / 'kind'}}}
shots: [0, 1]
max_examples: 9
max_new_tokens: 6
micro_batch: 4
"""
    matrix.write_text(f"out: {tmp_path / 'matrix'}\nzero3: true\n" + body)
    cli = [sys.executable, "-m", "odyssey", "evaluate-tasks"]
    r = subprocess.run(cli + [str(matrix), "--nproc", "2", "--master-port", str(free_port())], capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = json.loads((tmp_path / "matrix" / "matrix.json").read_text())
    cells = {(c["model"], c["test"], c["shots"]): c for c in out["cells"]}
    sizes = {t: json.loads((tasks / t / "manifest.json").read_text())["splits"]["test"]["samples"]
             for t in ("first_word", "first_word_ood", "kind")}
    assert len(cells) == 12 and all(c["examples"] == min(9, sizes[c["test"]]) for c in cells.values())
    assert cells[("ft", "first_word_ood", 1)]["metric"] == "rouge_l" and cells[("ft", "kind", 0)]["metric"] == "accuracy"
    assert (tmp_path / "matrix" / "models" / "ft" / "config.json").is_file()  # the run's newest checkpoint, exported
    kinds = {g["shots"]: g for g in out["models"]}
    assert set(kinds[0]) >= {"in-domain", "out-of-domain", "cross-task"} and len(out["findings"]) == 2

    client = MlflowClient(f"sqlite:///{tmp_path / 'matrix'}/mlflow.db")
    run_ = client.search_runs([client.get_experiment_by_name("odyssey-tasks").experiment_id])[0]
    logged = run_.data.metrics
    assert logged["tasks/ft/kind/1shot/accuracy"] == pytest.approx(cells[("ft", "kind", 1)]["score"])
    assert len([k for k in logged if k.endswith(("rouge_l", "accuracy"))]) == 12
    assert {a.path for a in client.list_artifacts(run_.info.run_id, "tasks")} == {
        "tasks/matrix.json", "tasks/matrix.csv", "tasks/heatmap.png"}

    single = tmp_path / "single.yaml"  # one plain process, no ZeRO: the same scores for the base model
    single.write_text(f"out: {tmp_path / 'single'}\n" + body.replace(f"  - {{name: ft, path: {tmp_path / 'ft'}, "
                                                                        f"task: first_word}}\n", ""))
    r = subprocess.run(cli + [str(single)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    for c in json.loads((tmp_path / "single" / "matrix.json").read_text())["cells"]:
        assert c["score"] == pytest.approx(cells[(c["model"], c["test"], c["shots"])]["score"], abs=1e-6)
    r = subprocess.run(cli + [str(single)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and "-shot:" not in r.stdout  # every cell was scored before
    matrix.write_text(matrix.read_text().replace("shots: [0, 1]", "shots: [0, 200]"))
    r = odyssey(["evaluate-tasks", matrix])
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1] == (
        f"odyssey: error: test set 'first_word': 200-shot needs 200 demonstrations; the training split of "
        f"{tasks / 'first_word'} has {json.loads((tasks / 'first_word' / 'manifest.json').read_text())['splits']['train']['samples']} (set demos_from)")
