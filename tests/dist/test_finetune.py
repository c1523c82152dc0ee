"""`odyssey finetune`: the pretraining Trainer on task data (odyssey prep --task) under 2-rank ZeRO-3. The loss is the
target's only: the eval scores exactly the test split's target tokens, token statistics leave prompts and padding
out, a halted run resumes to the end with the losses of an uninterrupted run, the eval points log the task metric
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
from tests.dist.helpers import client_and_run, history, run

pytestmark = pytest.mark.slow


def test_finetune_scores_targets_only_and_resumes(assets, tmp_path):
    docs = tiny.prose_docs(120, seed=11)
    src = tmp_path / "task.jsonl"
    src.write_text("".join(json.dumps({"input": d, "output": " " + d.split()[0]}) + "\n" for d in docs))
    cfg = validate(TaskCfg, {"name": "first_word", "source": str(src), "kind": "generation", "max_len": 64,
                             "template": "Passage: {input}\nFirst word:", "test": 0.2, "val": 0.0}, "task")
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
    assert sorted(delta) == [3, 6] and 0 < delta[3] < delta[6]  # Adam at a constant LR keeps moving away
    assert sorted(p.name for p in (tmp_path / "ft" / "base_weights").iterdir()) == ["rank0_of2.pt", "rank1_of2.pt"]
    tokens = json.loads((tmp_path / "ft" / "tokens" / "first_word" / "step_6.json").read_text())
    assert tokens["tokens"] == manifest["splits"]["test"]["target_tokens"]  # the targets and their EOS, nothing else

    lm_cfg = tmp_path / "lm.yaml"
    lm_cfg.write_text(run_cfg.read_text().replace(str(tmp_path / "tasks" / "first_word"),
                                                  str(assets["domains"] / "prose")).replace("name: ft,", "name: lm,"))
    r = subprocess.run([sys.executable, "-m", "odyssey", "finetune", str(lm_cfg), "--nproc", "2"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith(
        "odyssey: error: odyssey finetune trains on task data"), r.stderr[-2000:]
