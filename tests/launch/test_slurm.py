"""The shipped SLURM scripts, sbatch'ed as they are (options overridden on the sbatch command line, as a user does)
on a real one-node SLURM: training with one task per rank and with the deepspeed launcher per node, preemption
(USR1 → checkpoint → requeue, then TERM → SIGKILL after a grace time → scontrol requeue, each resumed to the
same losses), and a study as a job array plus the dependent aggregation. The node's CPUs stand in for GPUs: two
ranks per job, gloo."""
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

import launch
from data_prep.prepare import PrepOptions, prepare_domain
from tests import tiny
from tests.dist.helpers import client_and_run, history

pytestmark = pytest.mark.slow
SLURM_DIR = launch.script("slurm")
CPU_TRAIN = ["--nodes=1", "--ntasks-per-node=2", "--gpus-per-node=0", "--cpus-per-task=1"]
GRACE_S = 30  # between TERM and SIGKILL (a partition's GraceTime)


def sbatch(slurm, cwd, *args, env=None):
    r = subprocess.run(["sbatch", "--parsable", *args], cwd=cwd, env={**slurm.env, **job_env(), **(env or {})},
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip().split(";")[0]


def job_env():
    return {"PYTHON": sys.executable, "DS_ACCELERATOR": "cpu"}


def jobs(slurm, job_id) -> list[dict]:
    """scontrol's record of a job (one per array task): JobState, Restarts, ExitCode, ..."""
    r = subprocess.run(["scontrol", "-o", "show", "job", job_id], env=slurm.env, capture_output=True, text=True)
    return [dict(re.findall(r"(\w+)=(\S*)", line)) for line in r.stdout.splitlines() if line.strip()]


def wait_done(slurm, job_id, timeout=900) -> list[dict]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        recs = jobs(slurm, job_id)
        if recs and all(r["JobState"] in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY")
                        for r in recs):
            return recs
        time.sleep(1)
    raise AssertionError(f"job {job_id} not done after {timeout}s: {jobs(slurm, job_id)}")


def wait_for_line(path: Path, text: str, timeout=600) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.is_file() and text in path.read_text(errors="replace"):
            return
        time.sleep(0.3)
    raise AssertionError(f"{text!r} not in {path} after {timeout}s")


def run_config(assets, out, steps=16):
    cfg = out / "run.yaml"
    cfg.write_text(f"""
model: {{path: {assets['model']}}}
data: {{streams: [{{name: prose, path: {assets['domains'] / 'prose'}}}], micro_batch: 2}}
optim: {{lr: 3.0e-3, warmup_steps: 2, schedule: cosine}}
run: {{out_dir: {out / 'runs'}, name: straight, max_steps: {steps}, seed: 3}}
eval: {{interval: 8, max_samples: 8, domains: [{{name: code, path: {assets['domains'] / 'code'}}}]}}
checkpoint: {{interval: 0}}
tracking: {{experiment: test}}
""")
    return cfg


def test_training_jobs_and_preemption_requeue_resume(assets, slurm, tmp_path):
    (tmp_path / "logs").mkdir()
    cfg = run_config(assets, tmp_path)
    # uninterrupted: one deepspeed launcher task on the node, starting the 2 ranks itself (hostfile from SLURM)
    straight = sbatch(slurm, tmp_path, "--nodes=1", "--ntasks-per-node=1", "--gpus-per-node=0", "--cpus-per-task=2",
                      str(SLURM_DIR / "train_deepspeed.sbatch"), str(cfg), env={"SLOTS": "2"})
    # preempted: one task per rank through srun; USR1 to the batch script once step 4 is logged
    preempted = sbatch(slurm, tmp_path, *CPU_TRAIN, str(SLURM_DIR / "train.sbatch"), str(cfg),
                       "run.name=preempted")
    task0 = tmp_path / "logs" / f"odyssey-train-{preempted}-task0.out"
    wait_for_line(task0, "[odyssey] step 4/16")
    subprocess.run(["scancel", "--signal=USR1", "--batch", preempted], env=slurm.env, check=True)
    t_signal = time.time()
    # then preempted the way a scheduler does it without a user signal: TERM to every process of the job (srun
    # answers it with SIGKILL to the ranks), SIGKILL after a grace time, requeue (PreemptMode=REQUEUE does the last
    # two itself); the restart resumes from the USR1 checkpoint and replays the lost steps
    wait_for_line(task0, "[odyssey] step 10/16")
    subprocess.run(["scancel", "--signal=TERM", "--full", preempted], env=slurm.env, check=True)
    deadline = time.time() + GRACE_S
    while time.time() < deadline and jobs(slurm, preempted)[0]["JobState"] == "RUNNING":
        time.sleep(0.5)
    subprocess.run(["scancel", "--signal=KILL", "--full", preempted], env=slurm.env)  # too late: nothing left
    (rec,) = wait_done(slurm, preempted)
    assert rec["JobState"] in ("FAILED", "COMPLETED"), rec
    subprocess.run(["scontrol", "requeue", preempted], env=slurm.env, check=True)
    time.sleep(3)
    (rec,) = wait_done(slurm, preempted)
    wall = time.time() - t_signal
    (rec_straight,) = wait_done(slurm, straight)
    assert rec_straight["JobState"] == "COMPLETED", rec_straight
    assert rec["JobState"] == "COMPLETED" and rec["Restarts"] == "2", rec

    batch_log = (tmp_path / "logs" / f"odyssey-train-{preempted}.out").read_text()
    assert "asking every rank to checkpoint" in batch_log and f"requeueing job {preempted}" in batch_log
    assert "(restart 1)" in batch_log and "(restart 2)" in batch_log and "step ended by TERM" in batch_log
    log0 = task0.read_text()
    stopped = int(re.search(r"stopped at step (\d+) by SIGUSR1", log0).group(1))
    resumes = re.findall(r"resumed from \S+ at step (\d+)", log0)
    assert 4 <= stopped < 10 and len(resumes) == 2 and resumes[0] == str(stopped) and "done: 16 steps" in log0
    assert "resource_tracker" not in log0  # no helper process killed by the signal
    assert "rank 1/2" in (tmp_path / "logs" / f"odyssey-train-{preempted}-task1.out").read_text()
    ds_log = (tmp_path / "logs" / f"odyssey-train-ds-{straight}-task0.out").read_text()
    assert "rank 0/2" in ds_log and "rank 1/2" in ds_log and "done: 16 steps" in ds_log

    # the preempted run is one MLflow run whose losses equal the uninterrupted run's, step by step
    c1, r1 = client_and_run(tmp_path / "runs" / "straight")
    c2, r2 = client_and_run(tmp_path / "runs" / "preempted")
    assert len(r2) == 1 and r2[0].info.status == "FINISHED"
    a = history(c1, r1[0].info.run_id, "train/loss")
    b = history(c2, r2[0].info.run_id, "train/loss")
    assert sorted(a) == sorted(b) == list(range(1, 17))
    for step in a:
        assert b[step] == pytest.approx(a[step], abs=1e-6), step
    print(f"preemption: USR1 stop at step {stopped}, TERM at step 10 (steps after {stopped} replayed), completed "
          f"{wall:.0f}s after USR1 (requeue delays included)")


def test_study_job_array_with_dependent_aggregation(assets, slurm, tmp_path):
    opts = PrepOptions(progress=False, workers=0)
    prepare_domain(tiny.write_text_dir(tmp_path / "r", tiny.prose_docs(200, seed=7)), tmp_path / "d", "ref",
                   str(assets["model"]), 64, opts)
    study = tmp_path / "study.yaml"
    study.write_text(f"""
name: slurm-study
out_dir: {tmp_path / 'study'}
model: {{path: {assets['model']}}}
reference: {{name: ref, path: {tmp_path / 'd' / 'ref'}}}
domains: [{{name: prose, path: {assets['domains'] / 'prose'}}}, {{name: code, path: {assets['domains'] / 'code'}}}]
train: {{data: {{micro_batch: 2}}, optim: {{lr: 5.0e-3}}, run: {{max_steps: 4}}, eval: {{interval: 2, max_samples: 8}}}}
similarity: {{chunks: 32}}
""")
    env = {**slurm.env, **job_env(), "TRAIN_SBATCH_ARGS": " ".join(CPU_TRAIN), "STEP_SBATCH_ARGS": "--cpus-per-task=1"}
    r = subprocess.run(["bash", str(SLURM_DIR / "submit_study.sh"), str(study)], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    ids = dict(re.findall(r"(\w+)=(\S+)", r.stdout))
    assert ids["runs"] == "2"
    # the aggregation waits on the whole array
    assert jobs(slurm, ids["aggregate"])[0]["Dependency"].startswith(f"afterok:{ids['array']}")
    agg = wait_done(slurm, ids["aggregate"], timeout=1200)
    tasks = jobs(slurm, ids["array"])
    assert sorted(t["ArrayTaskId"] for t in tasks) == ["0", "1"]
    assert all(t["JobState"] == "COMPLETED" for t in tasks), tasks
    assert jobs(slurm, ids["setup"])[0]["JobState"] == "COMPLETED"
    assert agg[0]["JobState"] == "COMPLETED", (tmp_path / "logs").iterdir()
    for i, name in enumerate(["prose", "code"]):
        log = (tmp_path / "logs" / f"odyssey-study-{ids['array']}_{i}.out").read_text()
        assert f"configs/{name}.yaml" in log
        assert "done: 4 steps" in (tmp_path / "logs" / f"odyssey-study-{ids['array']}_{i}-task0.out").read_text()

    out = tmp_path / "study"
    assert (out / "report" / "index.html").is_file()
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{out}/mlflow.db")
    parent_id = json.loads((out / "study_state.json").read_text())["parent_run_id"]
    assert client.get_run(parent_id).info.status == "FINISHED"
    exp = client.get_experiment_by_name("slurm-study")
    children = client.search_runs([exp.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}'")
    assert sorted((c.data.tags["domain"], c.info.status) for c in children) == [("code", "FINISHED"),
                                                                                ("prose", "FINISHED")]
    summary = json.loads((out / "study" / "summary.json").read_text())
    assert [row["domain"] for row in summary["rows"]] == ["prose", "code"]


def test_bad_inputs_fail_the_submission_in_one_line(slurm, tmp_path):
    env = {**slurm.env, **job_env()}
    r = subprocess.run(["bash", str(SLURM_DIR / "submit_study.sh"), str(tmp_path / "nope.yaml")], cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "study file not found" in r.stderr, r.stderr
    # a training job outside SLURM refuses to start
    r = subprocess.run(["bash", str(SLURM_DIR / "train.sbatch"), "x.yaml"], cwd=tmp_path,
                       env={k: v for k, v in env.items() if not k.startswith("SLURM_")}, capture_output=True,
                       text=True)
    assert r.returncode == 2 and "not inside a SLURM job" in r.stderr, r.stderr
