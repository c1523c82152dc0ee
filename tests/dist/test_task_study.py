"""A task study (`kind: tasks`) end to end on a tiny Llama: raw task sources prepared (plain and FTICL), one
fine-tuning run per task and FTICL setting, the matrix over base + every run × in-domain, out-of-domain and
cross-task test sets as a child run, and the parent run with the matrix metrics, the findings and the report. A second
invocation prepares, trains and scores nothing again; after a source changes, only it is prepared and scored
again."""
import json
import subprocess
import sys

import pytest

from tests import tiny

pytestmark = pytest.mark.slow


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def study(cmd, *args):
    r = subprocess.run([sys.executable, "-m", "odyssey", "study", str(cmd), *args], capture_output=True, text=True,
                       timeout=1200)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    return r.stdout


def test_task_study_trains_each_task_and_setting_then_scores_the_matrix(assets, tmp_path):
    from mlflow import MlflowClient

    prose = tiny.prose_docs(60, seed=21)
    src = tmp_path / "src"
    write_jsonl(src / "first_word" / "train.jsonl", [{"input": d, "output": " " + d.split()[0]} for d in prose[:40]])
    write_jsonl(src / "first_word" / "test.jsonl", [{"input": d, "output": " " + d.split()[0]} for d in prose[40:]])
    write_jsonl(src / "code_first" / "test.jsonl", [{"input": d, "output": " " + d.split()[0]}
                                                    for d in assets["code_docs"][:10]])
    write_jsonl(src / "kind.jsonl", [{"input": d, "label": "prose"} for d in prose[:30]]
                + [{"input": d, "label": "code"} for d in assets["code_docs"][:30]])
    cfg = tmp_path / "tasks.yaml"
    cfg.write_text(f"""
kind: tasks
name: tiny-tasks
out_dir: {tmp_path / 'study'}
model: {{path: {assets['model']}}}
prep: {{max_len: 96, test: 0.2, val: 0.0}}
tasks:
  - {{name: first_word, source: {src / 'first_word'}, kind: generation, template: "Passage: {{input}}\\nFirst word:"}}
  - {{name: kind, source: {src / 'kind.jsonl'}, kind: classification, template: "Text: {{input}}\\nKind:",
     label_words: {{prose: " story", code: " program listing"}}}}
ood: [{{name: code_first, of: first_word, source: {src / 'code_first'}}}]
fticl: [1]
train:
  data: {{micro_batch: 4}}
  optim: {{lr: 1.0e-3}}
  run: {{max_steps: 2}}
  eval: {{interval: 0, token_stats: false}}
  task: {{examples: 4, max_new_tokens: 4}}
matrix: {{shots: [0], max_examples: 6, max_new_tokens: 4, micro_batch: 3}}
""")
    keys = ["first_word", "first_word-fticl1", "kind", "kind-fticl1"]
    assert study(cfg, "--list").split() == keys
    out = study(cfg)
    root = tmp_path / "study"
    manifest = json.loads((root / "tasks" / "first_word-fticl1" / "manifest.json").read_text())
    assert manifest["task"]["demos"] == 1 and manifest["task"]["max_len"] == 96  # the study's prep defaults
    assert all((root / "runs" / k / "FINISHED").is_file() for k in keys)
    result = json.loads((root / "matrix" / "matrix.json").read_text())
    assert len(result["cells"]) == 5 * 3  # base + 4 runs × (first_word, kind, code_first); k-shot: test_finetune
    kinds = {(c["model"], c["test"]): (c["model_task"], c["test_task"], c["ood"]) for c in result["cells"]}
    assert kinds[("first_word-fticl1", "code_first")] == ("first_word", "first_word", True)
    assert {m["fticl"] for m in result["models"]} == {True, False} and len(result["findings"]) == 2

    client = MlflowClient(f"sqlite:///{root}/mlflow.db")
    exp = client.get_experiment_by_name("tiny-tasks").experiment_id
    parent = next(r for r in client.search_runs([exp]) if r.info.run_name == "tiny-tasks")
    children = client.search_runs([exp], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted(r.info.run_name for r in children) == sorted(keys + ["matrix"])
    assert parent.data.metrics["tasks/kind-fticl1/kind/0shot/accuracy"] == pytest.approx(
        next(c["score"] for c in result["cells"] if (c["model"], c["test"]) == ("kind-fticl1", "kind")))
    assert any(k.startswith("finding/") for k in parent.data.tags)
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "report")} >= {"report/index.html"}
    ft_run = next(r for r in children if r.info.run_name == "first_word")
    assert "task/first_word/rouge_l" in ft_run.data.metrics and "weights/mean_abs_delta" in ft_run.data.metrics
    page = (root / "report" / "index.html").read_text()
    assert "generation tasks generalize worse than classification" in page and "code_first" in page

    # the parts a SLURM job array runs (launch/slurm/submit_study.sh): a run's config by its array index
    assert study(cfg, "--config-for", "1").strip() == str(root / "configs" / "first_word-fticl1.yaml")
    again = study(cfg)
    assert "preparing task" not in again and "-shot:" not in again and again.count("finished earlier, skipped") == 4
    assert "preparing task" in out

    # a source that changed is prepared again, and only the cells on it are scored again
    write_jsonl(src / "code_first" / "test.jsonl", [{"input": d, "output": " " + d.split()[0]}
                                                    for d in assets["code_docs"][:8]])
    third = study(cfg)
    assert third.count("preparing task") == 1 and "preparing task code_first" in third
    scored = [line for line in third.splitlines() if "-shot:" in line]
    assert len(scored) == 5 and all("× code_first" in line for line in scored)
    cells = json.loads((root / "matrix" / "matrix.json").read_text())["cells"]
    assert len(cells) == 15 and {c["examples"] for c in cells if c["test"] == "code_first"} == {6}
