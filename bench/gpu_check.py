"""The GPU device check (run by bench/gpu_check.sh, which installs the carried wheels first). Stages, most valuable
first, each a process of its own (bench/gpu_stages.py) under its own time limit within one budget:

  build       a 1.1B Llama of TinyLlama's shape built from config, shards prepped (seq 2048); the device and stack
  ops         DeepSpeed's FusedAdam and CPUAdam built once, into a cache every later process reuses
  speed       Odyssey against the bare `deepspeed.initialize` loop, interleaved rounds, one resolved DeepSpeed JSON:
              tokens/s, TFLOP/s, MFU, Odyssey / bare
  variants    Odyssey config variants (gpu_stages.py: variants) once each: tokens/s, MFU
  functional  eval with token statistics, checkpoint save, resume to the end, bf16 export loaded back
  offload     a short zero3_offload run
  7b          Llama-2-7B's shape, ZeRO-3 (offloaded below 100 GiB of device memory), 10 steps: tokens/s, MFU

A stage's limit is the smaller of its own and what is left of --budget-s; a stage started with under 30 s left would
only be killed, so it is skipped. Each row goes to OUT/rows.jsonl and the console the moment its stage ends (a failed
stage also prints its last 30 lines), OUT/table.md holds the table so far, OUT/stages.log each stage's log tail; the
models, shards, checkpoints and the torch-extensions cache stay in the work folder, outside OUT (the device tool
brings back at most 8 files of 16 MiB). Exit 0 when no stage failed or timed out. The same script checks its own flow
on CPU with a small shape, the 7b stage skipped there (docs/BENCHMARKS.md, "GPU device check", has the command):
    python bench/gpu_check.py --shape cpu --seq-len 256 --micro-batch 2 --steps 4 --warmup 2 --budget-s 1500
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.gpu_stages import ROW, STAGES, last_line, variants  # noqa: E402
from bench.workload import SHAPES  # noqa: E402

MIN_STAGE_S = 30  # less than this left of the budget: the stage is skipped (starting one takes ~15 s)
TAIL_LINES = 30  # of a failed stage's log, printed
LOG_TAIL_BYTES = 1 << 20  # of each stage's log, kept in OUT/stages.log


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="tinyllama", choices=sorted(SHAPES))
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--micro-batch", type=int, default=8)
    ap.add_argument("--accumulation", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--text-mb", type=float, default=6.0)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved Odyssey / bare rounds of the speed stage")
    ap.add_argument("--variants", default="all", help="comma-separated names from gpu_stages.py's variants, or all")
    ap.add_argument("--stages", default="all", help=f"comma-separated, of {','.join(STAGES)} (the rest are skipped)")
    ap.add_argument("--budget-s", type=float, default=480.0, help="all stages together, in seconds")
    ap.add_argument("--stage-limit", action="append", default=[], metavar="NAME=SECONDS",
                    help="replace a stage's own time limit (repeatable)")
    ap.add_argument("--out", default=os.environ.get("OUT") or "/tmp/odyssey-gpu-check",
                    help="rows, table and log tails (default $OUT, else /tmp/odyssey-gpu-check)")
    ap.add_argument("--work", default="/tmp/odyssey-gpu-work", help="models, shards, runs: outside --out")
    ap.add_argument("--port", type=int, help="the bare loop's rendezvous port (default: a free one)")
    args = ap.parse_args()
    args.out, args.work = Path(args.out).resolve(), Path(args.work).resolve()
    if args.work.is_relative_to(args.out):
        ap.error(f"--work {args.work} is inside --out {args.out}: the work folder holds gigabytes")
    args.limits = {name: float(stage.limit_s) for name, stage in STAGES.items()}
    for item in args.stage_limit:
        name, _, seconds = item.partition("=")
        if name not in STAGES or not seconds.replace(".", "", 1).isdigit():
            ap.error(f"--stage-limit {item}: expected NAME=SECONDS with NAME one of {', '.join(STAGES)}")
        args.limits[name] = float(seconds)
    args.selected = list(STAGES) if args.stages == "all" else args.stages.split(",")
    unknown = [s for s in args.selected if s not in STAGES] + (
        [] if args.variants == "all" else [v for v in args.variants.split(",") if v not in variants(args)])
    if unknown:
        ap.error(f"unknown stage or variant: {', '.join(unknown)}")
    args.port = args.port or free_port()
    return args


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare(args) -> dict[str, str]:
    """Fresh OUT files, the stages' settings in WORK/check.json; returns the stages' environment."""
    (args.work / "logs").mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    for name in ("rows.jsonl", "table.md", "stages.log"):
        (args.out / name).write_text("")
    keys = ("shape", "seq_len", "micro_batch", "accumulation", "warmup", "steps", "text_mb", "rounds", "variants",
            "port")
    (args.work / "check.json").write_text(json.dumps({**{k: getattr(args, k) for k in keys}, "work": str(args.work)}))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "MLFLOW_ALLOW_FILE_STORE": "true",  # mlflow-skinny: no SQL store
           "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    env.setdefault("TORCH_EXTENSIONS_DIR", str(args.work / "torch_extensions"))  # built by "ops", reused by the rest
    return env


def run_stage(name: str, limit: float, args, env: dict[str, str]) -> dict:
    """One stage as a process group of its own, killed whole at `limit`; its row from its ROW lines and exit."""
    log = args.work / "logs" / f"{name}.log"
    t0 = time.time()
    with open(log, "wb") as f:
        proc = subprocess.Popen([sys.executable, str(ROOT / "bench" / "gpu_stages.py"), name, "--work", str(args.work)],
                                stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True)
        try:
            code = proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            code = None
        end_group(proc)
    text = log.read_text(errors="replace")
    metrics: dict = {}
    for line in text.splitlines():
        if line.startswith(ROW):
            try:
                metrics.update(json.loads(line[len(ROW):]))
            except ValueError:  # a line cut by the kill
                pass
    so_far = metrics.pop("summary", "")
    if code == 0:
        status, summary = "ok", so_far or "done"
    elif code is None:
        status, summary = "timeout", f"killed at its {limit:.0f} s limit" + (f"; so far: {so_far}" if so_far else "")
    else:
        error = metrics.get("error") or last_line("\n".join(ln for ln in text.splitlines() if not ln.startswith(ROW)))
        status, summary = "failed", error + (f"; {so_far}" if so_far else "")
    keep_log_tail(name, status, log, args.out / "stages.log")
    return {"stage": name, "status": status, "seconds": round(time.time() - t0, 1), **metrics, "summary": summary}


def end_group(proc: subprocess.Popen) -> None:
    """Stop the stage's process group: SIGTERM when it still runs (the launchers pass it on), SIGKILL after 10 s;
    then SIGKILL whatever of the group outlived its leader."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def keep_log_tail(name: str, status: str, log: Path, dest: Path) -> None:
    size = log.stat().st_size
    with open(log, "rb") as f, open(dest, "ab") as out:
        f.seek(max(0, size - LOG_TAIL_BYTES))
        out.write(f"\n===== {name}: {status}, last {min(size, LOG_TAIL_BYTES):,} of {size:,} bytes\n".encode())
        out.write(f.read())


def table_line(row: dict) -> str:
    return f"| {row['stage']} | {row['status']} | {row['seconds']:.0f} s | {row['summary']} |"


HEADER = "| stage | status | time | result |\n|---|---|---|---|"


def record(row: dict, rows: list[dict], args) -> None:
    """The row, the moment its stage ends: to rows.jsonl, table.md and the console."""
    rows.append(row)
    with open(args.out / "rows.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    (args.out / "table.md").write_text("\n".join([HEADER, *map(table_line, rows)]) + "\n")
    print(table_line(row), flush=True)


def skip_reason(name: str, left: float, args, has_gpu: bool, rows: list[dict]) -> str | None:
    if name not in args.selected:
        return "skipped: not in --stages"
    if STAGES[name].needs_gpu and not has_gpu:
        return "skipped: no GPU"
    if any(r["stage"] == "build" and r["status"] in ("failed", "timeout") for r in rows):
        return "skipped: no model (the build stage did not succeed)"
    if left < MIN_STAGE_S:
        return f"skipped: {max(left, 0):.0f} s of the {args.budget_s:.0f} s budget left"
    return None


def main() -> int:
    import torch

    args = parse_args()
    env, rows, start = prepare(args), [], time.time()
    has_gpu = torch.cuda.is_available()
    print(f"gpu_check: {', '.join(args.selected)} within {args.budget_s:.0f} s; rows to {args.out / 'rows.jsonl'}, "
          f"work in {args.work}\n{HEADER}", flush=True)
    for name in STAGES:
        left = args.budget_s - (time.time() - start)
        skip = skip_reason(name, left, args, has_gpu, rows)
        if skip:
            record({"stage": name, "status": "skipped", "seconds": 0.0, "summary": skip}, rows, args)
            continue
        row = run_stage(name, min(args.limits[name], left), args, env)
        record(row, rows, args)
        if row["status"] != "ok":
            tail = (args.work / "logs" / f"{name}.log").read_text(errors="replace").splitlines()[-TAIL_LINES:]
            print(f"  {name}: last {len(tail)} lines of its log\n" + "\n".join("    " + ln for ln in tail), flush=True)
    for buffer in Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_*_{args.port}_*"):
        buffer.unlink(missing_ok=True)  # DeepSpeed's CPU comm op leaves 69 MB per rank and port (the bare loop's)
    print(f"\ngpu_check: {time.time() - start:.0f} s\n{(args.out / 'table.md').read_text()}", flush=True)
    return 1 if any(r["status"] in ("failed", "timeout") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
