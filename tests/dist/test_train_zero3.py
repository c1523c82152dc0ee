"""Real multi-process DeepSpeed ZeRO-3 (2 ranks, gloo on CPU) on a tiny Llama: eval metrics in MLflow, artifacts,
checkpoints, shards hashed once per node, and a halted + resumed run that reproduces the uninterrupted run's
losses."""
import json
import subprocess
import sys

import pytest

from tests.dist.helpers import client_and_run, history, run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def config(assets, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    cfg = out / "train.yaml"
    cfg.write_text(f"""
model: {{path: {assets['model']}}}
data:
  streams: [{{name: prose, path: {assets['domains'] / 'prose'}}}]
  micro_batch: 2
optim: {{lr: 3.0e-3, warmup_steps: 1, schedule: cosine, accumulation: 2}}
run: {{out_dir: {out}, name: straight, max_steps: 6, seed: 1}}
eval:
  interval: 3
  max_samples: 9     # odd on purpose: ranks get uneven shares and one pads
  domains: [{{name: code, path: {assets['domains'] / 'code'}}}]
checkpoint: {{interval: 3}}
tracking: {{experiment: test}}
""")
    return cfg, out


@pytest.fixture(scope="module")
def straight(config):
    cfg, out = config
    r = run(cfg)
    (out / "straight.log").write_text(r.stdout + r.stderr)  # what the launcher and its ranks printed
    return out / "straight"


def test_shards_are_hashed_once_per_node(straight):
    """Both ranks run on one node: its local rank 0 hashes the shards, rank 1 and the launcher's preflight do not
    (each hashing rank prints this line)."""
    log = (straight.parent / "straight.log").read_text()
    hashed = [line for line in log.splitlines() if "shard checksums of prose, code verified on" in line]
    assert len(hashed) == 1, hashed


def test_eval_metrics_params_and_artifacts(straight):
    client, runs = client_and_run(straight)
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    for dom in ("prose", "code"):
        ppl = history(client, run.info.run_id, f"eval/{dom}/ppl")
        assert sorted(ppl) == [0, 3, 6]
        ratio = history(client, run.info.run_id, f"eval/{dom}/ppl_ratio")
        assert ratio[0] == pytest.approx(1.0)
        assert ratio[6] == pytest.approx(ppl[6] / ppl[0])
    assert history(client, run.info.run_id, "eval/prose/ppl")[6] < history(client, run.info.run_id,
                                                                          "eval/prose/ppl")[0]
    for key in ("train/loss", "train/lr", "train/grad_norm", "train/tokens_per_s", "train/tokens_seen"):
        assert sorted(history(client, run.info.run_id, key))[-1] == 6, key
    # 2 ranks x micro_batch 2 x accumulation 2 x seq_len 64 tokens per step
    assert history(client, run.info.run_id, "train/tokens_seen")[6] == 6 * 2 * 2 * 2 * 64
    assert run.data.params["optim.lr"] == "0.003" and run.data.params["derived.world_size"] == "2"
    # ZeRO-3: rank 0 holds about half of the parameters (partitions are padded, so a little more)
    total, rank0 = int(run.data.params["derived.params"]), int(run.data.params["derived.params_on_rank0"])
    assert total > 100_000 and rank0 <= 0.55 * total
    arts = {a.path for d in ("config", "curves", "manifests") for a in client.list_artifacts(run.info.run_id, d)}
    assert {"config/config.yaml", "config/ds_config.json", "curves/degradation.png", "manifests/prose.json",
            "manifests/code.json"} <= arts
    ckpts = straight / "checkpoints"
    assert (ckpts / "latest").read_text() == "step_00000006"
    assert json.loads((ckpts / "step_00000003" / "COMPLETE").read_text())["world_size"] == 2


def test_baseline_matches_single_process_eval(straight, config):
    """The same base model evaluated by one process gives the 2-rank ZeRO-3 step-0 numbers (padding is not counted)."""
    cfg, out = config
    run(cfg, "run.name=single", "run.max_steps=1", "eval.interval=0", "checkpoint.interval=0", nproc=None)
    c2, r2 = client_and_run(straight)
    c1, r1 = client_and_run(out / "single")
    for dom in ("prose", "code"):
        two = history(c2, r2[0].info.run_id, f"eval/{dom}/loss")[0]
        one = history(c1, r1[0].info.run_id, f"eval/{dom}/loss")[0]
        assert one == pytest.approx(two, abs=1e-5)


def test_halt_and_resume_reproduces_losses(straight, config):
    cfg, out = config
    run(cfg, "run.name=resumed", "run.halt_at_step=3")
    halted = out / "resumed" / "checkpoints"
    assert (halted / "latest").read_text() == "step_00000003"
    run(cfg, "run.name=resumed", "--resume", "auto")
    c_a, runs_a = client_and_run(straight)
    c_b, runs_b = client_and_run(out / "resumed")
    assert len(runs_b) == 1, "the resumed run must continue the same MLflow run"
    a, b = runs_a[0].info.run_id, runs_b[0].info.run_id
    loss_a, loss_b = history(c_a, a, "train/loss"), history(c_b, b, "train/loss")
    assert sorted(loss_b) == [1, 2, 3, 4, 5, 6]
    for step in loss_a:
        assert loss_b[step] == pytest.approx(loss_a[step], abs=1e-6), step
    for key in ("eval/prose/ppl", "eval/code/ppl", "train/lr"):
        ha, hb = history(c_a, a, key), history(c_b, b, key)
        assert ha.keys() == hb.keys() and all(hb[s] == pytest.approx(ha[s], abs=1e-6) for s in ha), key
    assert runs_b[0].info.status == "FINISHED"


def test_fresh_start_refuses_existing_checkpoints(straight, config):
    cfg, _ = config
    r = subprocess.run([sys.executable, "-m", "odyssey", "train", str(cfg)], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 2
    assert "already holds checkpoints" in r.stderr
