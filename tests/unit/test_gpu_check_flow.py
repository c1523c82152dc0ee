"""The GPU device check's own flow, on CPU (bench/gpu_check.sh --shape cpu): one stage killed at a too-short
`--stage-limit`, the stages after it still run, each row reaches rows.jsonl and the console the moment its stage ends,
and OUT holds only the rows, the table and log tails (the models and runs stay in the work folder)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STAGES = ["build", "ops", "speed", "variants", "functional", "offload", "7b"]


def ops_cache() -> Path:
    """Where the suite's other jobs build DeepSpeed's ops (torch's default build folder), so the check's ops stage
    loads what they built (the check keeps its ops in its work folder unless TORCH_EXTENSIONS_DIR says where)."""
    import torch
    from torch.utils.cpp_extension import get_default_build_root

    if os.environ.get("TORCH_EXTENSIONS_DIR"):
        return Path(os.environ["TORCH_EXTENSIONS_DIR"])
    device = f"cu{torch.version.cuda.replace('.', '')}" if torch.version.cuda else "cpu"  # torch's own naming
    python = f"py{sys.version_info.major}{sys.version_info.minor}{getattr(sys, 'abiflags', '')}"
    return Path(get_default_build_root()) / f"{python}_{device}"


def run_check(out: Path, work: Path) -> tuple[int, list[tuple[float, str]]]:
    """The CPU flow with the functional stage given 5 s; (exit code, console lines with their arrival times)."""
    cmd = ["bench/gpu_check.sh", "--shape", "cpu", "--seq-len", "64", "--micro-batch", "2", "--warmup", "1",
           "--steps", "2", "--text-mb", "1", "--rounds", "1", "--variants", "mb2", "--budget-s", "1500",
           "--stage-limit", "ops=900", "--stage-limit", "functional=5", "--work", str(work)]
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(out), "TORCH_EXTENSIONS_DIR": str(ops_cache())}
    t0, lines = time.time(), []
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        lines.append((time.time() - t0, line.rstrip("\n")))
    return proc.wait(), lines


@pytest.mark.slow
def test_cpu_flow_survives_a_killed_stage(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    code, lines = run_check(out, work)
    console = "\n".join(text for _, text in lines)
    rows = [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines()]
    status = {r["stage"]: r["status"] for r in rows}
    assert [r["stage"] for r in rows] == STAGES, console
    assert code == 1 and status["functional"] == "timeout", console
    assert all(status[s] == "ok" for s in ("build", "ops", "speed", "variants", "offload")), console
    assert status["7b"] == "skipped" and "no GPU" in rows[-1]["summary"]
    assert len(rows[STAGES.index("speed")]["rounds_tok_s"]["odyssey"]) == 1
    # the killed stage's last lines were printed, its first line included
    tail = console.split("functional: last", 1)[1]
    assert "gpu_stages: functional" in tail.split("| offload |")[0], console
    # rows reached the console in stage order, each as its stage ended: the functional row before offload ran
    arrived: dict[str, float] = {}
    for t, text in lines:
        cells = text.split("|")
        if text.startswith("| ") and len(cells) >= 6 and cells[1].strip() in STAGES:
            arrived.setdefault(cells[1].strip(), t)  # the first time; the final table repeats every row
    assert list(arrived) == STAGES, console
    offload_s = rows[STAGES.index("offload")]["seconds"]
    assert arrived["offload"] - arrived["functional"] >= offload_s - 2, (arrived, offload_s)
    # OUT: rows, table, log tails and the console log, small; the model and the runs are in the work folder
    assert sorted(p.name for p in out.rglob("*")) == ["gpu_check.log", "rows.jsonl", "stages.log", "table.md"]
    assert sum(p.stat().st_size for p in out.iterdir()) < 4 << 20
    assert (work / "cpu-seq64" / "model" / "config.json").is_file() and (work / "runs" / "offload").is_dir()
