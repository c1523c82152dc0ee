"""`odyssey eval --checkpoints`: a watcher of 2 ranks started before training scores each checkpoint as it appears,
into the training run, with the numbers the training job itself logs for the same weights; only rank 0 builds each
model on the host and sends it to the other rank (trainer/checkpoint_eval.py: shared_model), so these numbers also
say that rank 1 scored with the same weights. HF-format checkpoints into a new run, single-process."""
import subprocess
import sys

import pytest

from tests.dist.helpers import client_and_run, history, run, start_ranks, wait_ranks
from tests.cli import odyssey

pytestmark = pytest.mark.slow


def test_watch_evaluates_checkpoints_into_the_training_run(assets, tmp_path):
    cfg = tmp_path / "w.yaml"
    cfg.write_text(f"""
model: {{path: {assets['model']}}}
data: {{streams: [{{name: prose, path: {assets['domains'] / 'prose'}}}], micro_batch: 2}}
optim: {{lr: 3.0e-3}}
run: {{out_dir: {tmp_path}, name: w, max_steps: 6}}
eval: {{interval: 0, max_samples: 8, domains: [{{name: code, path: {assets['domains'] / 'code'}}}]}}
checkpoint: {{interval: 2}}
tracking: {{experiment: test}}
""")
    watcher = start_ranks(["eval", "--checkpoints", str(tmp_path / "w" / "checkpoints"), "--watch", "--poll", "1",
                           "--until-step", "6"])
    run(cfg)
    done = wait_ranks(watcher)
    assert [rc for rc, _, _ in done] == [0, 0], [err[-3000:] for _, _, err in done]
    assert "evaluated 3 checkpoint(s): steps [2, 4, 6]" in done[0][1]
    assert done[0][1].count("built once on rank 0's host, sent to 2 ranks") == 3
    client, runs = client_and_run(tmp_path / "w")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"  # the watcher leaves the training run's status be
    rid = runs[0].info.run_id
    for dom in ("prose", "code"):
        values = [m for m in client.get_metric_history(rid, f"eval/{dom}/ppl")]
        steps = sorted({m.step for m in values})
        assert steps == [0, 2, 4, 6]
        assert 2 in history(client, rid, f"tokens/{dom}/topk_share")
    # step 6 was scored by both, step 0 by the trainer: each (metric, step) once, whoever logged it
    for key in runs[0].data.metrics:
        steps = [m.step for m in client.get_metric_history(rid, key)]
        assert len(steps) == len(set(steps)), (key, sorted(steps))
    # a second pass finds nothing new; a missing folder is one line
    r = subprocess.run([sys.executable, "-m", "odyssey", "eval", "--checkpoints", str(tmp_path / "w" / "checkpoints")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "no new complete checkpoint" in r.stdout
    r = odyssey(["eval", "--checkpoints", tmp_path / "nope"])
    assert r.returncode == 2 and "checkpoints folder not found" in r.stderr


def test_hf_format_checkpoints_into_a_new_run(assets, tmp_path):
    """A folder of HF checkpoints (here: an export) scored into a new run, with the baseline computed on the spot."""
    cfg = tmp_path / "h.yaml"
    cfg.write_text(f"""
model: {{path: {assets['model']}}}
data: {{streams: [{{name: prose, path: {assets['domains'] / 'prose'}}}], micro_batch: 2}}
optim: {{lr: 3.0e-3}}
run: {{out_dir: {tmp_path}, name: h, max_steps: 4}}
eval: {{interval: 0, max_samples: 8}}
tracking: {{experiment: test}}
""")
    run(cfg)
    hf = tmp_path / "hf_ckpts"
    r = odyssey(["export", str(tmp_path / "h"), str(hf / "step_4")])
    assert r.returncode == 0, r.stderr[-2000:]
    r = subprocess.run([sys.executable, "-m", "odyssey", "eval", "--checkpoints", str(hf), "--config",
                        str(tmp_path / "h" / "config.yaml"), "--new-run"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and "steps [4]" in r.stdout, r.stderr[-2000:]
    train_client, train_runs = client_and_run(tmp_path / "h")
    eval_client, eval_runs = client_and_run(tmp_path)  # the new run lives beside the checkpoints folder
    trained = history(train_client, train_runs[0].info.run_id, "eval/prose/ppl")
    scored = history(eval_client, eval_runs[0].info.run_id, "eval/prose/ppl")
    assert sorted(scored) == [0, 4]
    assert eval_runs[0].info.status == "FINISHED"  # a run of its own is ended by the evaluation
    assert scored[0] == pytest.approx(trained[0], rel=1e-5) and scored[4] == pytest.approx(trained[4], rel=1e-5)
