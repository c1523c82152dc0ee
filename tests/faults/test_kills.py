"""Deaths on real 2-rank ZeRO-3 jobs: one rank SIGKILLed at a random step (two seeds, one after the other, the second
a --resume auto), a preemption (SIGTERM to every rank, SIGKILL after a grace time), a save whose writes
fail on one rank only (both ranks stop with one line), then the job SIGKILLed inside a save after the shards are
written. The run ends with the losses of an uninterrupted run, a ledger without a
duplicate or a hole, every metric point once in MLflow, and the partial checkpoint never picked."""
import os
import random
import re
import signal
import subprocess

import psutil
import pytest

from tests.dist.helpers import ROOT, client_and_run, run_wrapped, wrapped
from tests.dist.test_production import ledger_by_step

pytestmark = pytest.mark.slow
STEPS = 20
TIMED = ("train/tokens_per_s", "train/tokens_per_s_per_device", "train/mfu", "checkpoint/save_s")


@pytest.fixture(scope="module")
def straight(assets, tmp_path_factory):
    out = tmp_path_factory.mktemp("kills")
    cfg = out / "train.yaml"
    cfg.write_text(f"""
model: {{path: {assets['model']}}}
data: {{streams: [{{name: prose, path: {assets['domains'] / 'prose'}}}], micro_batch: 2}}
optim: {{lr: 3.0e-3, warmup_steps: 1}}
run: {{out_dir: {out}, name: straight, max_steps: {STEPS}, seed: 3}}
eval: {{interval: 10, max_samples: 8}}
checkpoint: {{interval: 2, keep_last: 2}}
tracking: {{experiment: test}}
""")
    run_wrapped(cfg)
    return cfg, out


def kill_one_rank_after(cfg, seed: int, *args) -> str:
    """Start the job; once it logs a step 3-4 steps (by seed) past where it started (so a checkpoint was saved on
    the way: checkpoint.interval 2), SIGKILL one rank (by seed). Returns the job's output."""
    rng = random.Random(seed)
    ahead, victim = rng.randint(3, 4), rng.randint(0, 1)
    c, env = wrapped(cfg, "run.name=killed", *args)
    p = subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)
    start, lines = 0, []
    for line in p.stdout:
        lines.append(line)
        if m := re.search(r"resumed from .* at step (\d+)", line):
            start = int(m.group(1))
        m = re.search(rf"step (\d+)/{STEPS} loss", line)
        if m and int(m.group(1)) >= start + ahead:
            ranks = [r for r in psutil.Process(p.pid).children(recursive=True)
                     if f"--local_rank={victim}" in " ".join(r.cmdline())]
            assert ranks, "".join(lines)[-3000:]
            ranks[0].send_signal(signal.SIGKILL)
            break
    rest = p.communicate(timeout=300)[0]
    assert p.returncode != 0, "".join(lines)[-3000:] + rest[-3000:]
    return "".join(lines) + rest


def terminate_then_kill(cfg, grace_s: float) -> str:
    """What a scheduler does to a job it preempts: SIGTERM to every rank two steps after the start, then SIGKILL to
    whatever is left after `grace_s`. Returns the job's output."""
    c, env = wrapped(cfg, "run.name=killed", "--resume", "auto")
    p = subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT,
                         start_new_session=True)
    start, lines = None, []
    for line in p.stdout:
        lines.append(line)
        if m := re.search(r"resumed from .* at step (\d+)", line):
            start = int(m.group(1))
        m = re.search(rf"step (\d+)/{STEPS} loss", line)
        if m and start is not None and int(m.group(1)) >= start + 2:
            for r in psutil.Process(p.pid).children(recursive=True):
                if "--local_rank=" in " ".join(r.cmdline()):
                    r.send_signal(signal.SIGTERM)
            break
    try:
        rest = p.communicate(timeout=grace_s)[0]
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        rest = p.communicate()[0]
    return "".join(lines) + rest


def test_ranks_killed_at_random_steps_and_inside_a_save_resume_to_the_same_run(straight):
    cfg, out = straight
    ckpts = out / "killed" / "checkpoints"
    kill_one_rank_after(cfg, 0)
    text = kill_one_rank_after(cfg, 1, "--resume", "auto")
    assert "resumed from" in text, text[-3000:]
    text = terminate_then_kill(cfg, grace_s=30)
    stopped = re.search(r"stopped at step (\d+) by SIGTERM: checkpoint saved", text)
    assert stopped and (ckpts / "latest").read_text() == f"step_{int(stopped.group(1)):08d}", text[-3000:]
    before = (ckpts / "latest").read_text()
    r = run_wrapped(cfg, "run.name=killed", "--resume", "auto", env={"TEST_FAIL_IN_SAVE": "1"}, expect=2)
    errors = [line for line in r.stderr.splitlines() if "odyssey: error" in line]
    assert len(errors) == 1 and "failed on rank 1: No space left on device" in errors[0], r.stderr[-3000:]
    assert "Traceback" not in r.stderr and (ckpts / "latest").read_text() == before
    assert [p.name for p in ckpts.glob("step_*") if p.name > before] == []  # the partial folder went
    c, env = wrapped(cfg, "run.name=killed", "--resume", "auto", env={"TEST_KILL_IN_SAVE": "1"})
    r = subprocess.run(c, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600, start_new_session=True)
    assert r.returncode == -signal.SIGKILL, r.stdout[-3000:]
    partial = [p.name for p in ckpts.glob("step_*") if not (p / "COMPLETE").exists()]
    assert len(partial) == 1 and partial[0] > before, (partial, before)  # the shards are there, COMPLETE is not
    assert (ckpts / "latest").read_text() == before
    r = run_wrapped(cfg, "run.name=killed", "--resume", "auto", "checkpoint.grace_s=0.01")  # saves take longer
    assert f"resumed from {ckpts / before}" in r.stdout
    assert "warning: a checkpoint takes" in r.stdout and "checkpoint.grace_s is 0.01s" in r.stdout

    client, [run] = client_and_run(out / "killed")
    ref_client, [ref] = client_and_run(out / "straight")
    assert set(run.data.metrics) == set(ref.data.metrics)
    for key in ref.data.metrics:  # every key: each (metric, step) once, and the uninterrupted run's points
        points = client.get_metric_history(run.info.run_id, key)
        steps = [m.step for m in points]
        assert len(steps) == len(set(steps)), f"{key}: a step logged twice: {sorted(steps)}"
        expected = {m.step: m.value for m in ref_client.get_metric_history(ref.info.run_id, key)}
        if key == "checkpoint/save_s":  # saved where each attempt stopped, too
            assert set(expected) <= set(steps), key
        elif key in TIMED:  # clocks differ; the steps they are logged at do not
            assert sorted(steps) == sorted(expected), key
        else:
            assert {m.step: m.value for m in points} == pytest.approx(expected, rel=1e-5, abs=1e-6), key
    assert run.info.status == "FINISHED"
    assert ledger_by_step(out / "killed") == ledger_by_step(out / "straight")
