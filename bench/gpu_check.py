"""The GPU device check (run by bench/gpu_check.sh, which installs the carried wheels first): on one GPU, a 1.1B Llama
of TinyLlama's shape built from config, seq 2048, shards prepped here, ZeRO-3 in the device's best dtype:

  1. Odyssey: warm-up + timed steps → tokens/s, TFLOP/s, MFU; then an eval with token statistics and a checkpoint
  2. the bare `deepspeed.initialize` loop on the same model, data and DeepSpeed JSON (bench/train_throughput.py)
  3. a 2-step resume from that checkpoint, an export to a HF folder loaded back with from_pretrained
  4. a short zero3_offload run
and prints one table. The same script runs on CPU with a small shape to check its own flow:
    python bench/gpu_check.py --shape cpu --seq-len 256 --steps 4 --warmup 2
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.train_throughput import (logged_seconds, odyssey_config, resolved_ds_config, run_odyssey,  # noqa: E402
                                    time_peer)


def model_flops(model: Path, seq_len: int) -> tuple[int, float]:
    """(parameters, training FLOPs per token), counted on the meta device."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from trainer.meter import flops_per_token

    config = AutoConfig.from_pretrained(model)
    with torch.device("meta"):
        n = sum(p.numel() for p in AutoModelForCausalLM.from_config(config).parameters())
    return n, flops_per_token(config, n, seq_len)


def seconds_in(log: str, pattern: str) -> str:
    found = re.findall(pattern, log)
    return f"{float(found[-1]):.1f} s" if found else "not seen"


def parse_args() -> argparse.Namespace:
    from trainer.model import resolve_dtype

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="tinyllama")
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--micro-batch", type=int, default=8)
    ap.add_argument("--accumulation", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--text-mb", type=float, default=6.0)
    ap.add_argument("--out", default="/tmp/odyssey-gpu-check")
    ap.add_argument("--port", type=int, default=29741)
    args = ap.parse_args()
    args.nproc, args.attn_impl, args.loader_workers, args.rounds = 1, None, None, 1
    args.dtype = resolve_dtype("auto")
    args.out = Path(args.out)
    args.out.mkdir(parents=True, exist_ok=True)
    args.uri = f"file://{args.out}/mlruns"
    args.runs = args.out / "runs"
    args.runs.mkdir(exist_ok=True)
    return args


def check_training(args, model, domain, flops_token: float, rows: list) -> dict:
    """Odyssey's throughput (then eval with token stats and a checkpoint), against the bare loop on the same model,
    data and DeepSpeed JSON. Returns the run config."""
    import numpy as np

    from bench.workload import token_rows
    from trainer.meter import detect_peak_tflops

    timed_end = args.warmup + args.steps
    cfg = odyssey_config(args, model, domain, args.runs, "main",
                         run={"max_steps": timed_end + 2, "halt_at_step": timed_end},
                         eval={"interval": timed_end, "max_samples": 32, "token_stats": True},
                         checkpoint={"save_final": True}, tracking={"experiment": "bench", "uri": args.uri})
    log1 = run_odyssey(args, cfg)
    seconds = logged_seconds(args.uri, args.warmup, timed_end)
    tps = args.steps * args.micro_batch * args.accumulation * args.seq_len / seconds
    peak = detect_peak_tflops(args.dtype)
    mfu = f", MFU {tps * flops_token / (peak * 1e12):.1%} of {peak:.0f}" if peak else ""
    rows.append(("Odyssey ZeRO-3", f"{tps:,.0f} tok/s, {tps * flops_token / 1e12:.1f} TFLOP/s{mfu} "
                                   f"({args.steps} steps after {args.warmup})"))
    rows.append(("  setup it chose", " ".join(re.findall(r"\[odyssey\] device (.*)", log1)[-1:])))
    np.save(args.out / "rows.npy", token_rows(domain))
    ds_json = resolved_ds_config(cfg, 1, args.out)
    bare = args.steps * args.micro_batch * args.accumulation * args.seq_len / time_peer(args, "bare", model,
                                                                                           args.out / "rows.npy", ds_json)
    rows.append(("bare deepspeed loop", f"{bare:,.0f} tok/s; Odyssey / bare = {tps / bare:.3f}"))
    rows.append(("eval + token stats", seconds_in(log1, rf"eval @ step {timed_end} \(([\d.]+)s\)")))
    rows.append(("checkpoint save", seconds_in(log1, r"checkpoint \S+ \(([\d.]+)s\)")))
    return cfg


def check_resume_and_export(args, cfg: dict, rows: list) -> None:
    """Resume for the last 2 steps, then export to bf16 and load the export back."""
    import numpy as np
    import torch
    import transformers

    timed_end = args.warmup + args.steps
    log2 = run_odyssey(args, cfg, "--resume", "auto", "run.halt_at_step=null")
    done = "finished" if f"done: {timed_end + 2} steps" in log2 else "DID NOT FINISH"
    rows.append(("resume + 2 steps", f"{done}; load " + seconds_in(log2, r"loaded in ([\d.]+)s")))
    t0 = time.time()
    export_dir = args.out / "export"
    subprocess.run([sys.executable, "-m", "odyssey", "export", str(args.runs / "main"), str(export_dir), "--dtype",
                    "bf16", "--overwrite"], check=True, capture_output=True)
    exported = transformers.AutoModelForCausalLM.from_pretrained(export_dir, dtype="auto").to(
        "cuda" if torch.cuda.is_available() else "cpu")
    x = torch.from_numpy(np.load(args.out / "rows.npy")[:1]).to(exported.device)
    with torch.no_grad():
        loss = exported(input_ids=x, labels=x).loss.item()
    rows.append(("export + from_pretrained", f"{time.time() - t0:.0f} s; loss of one sample {loss:.3f}"))


def check_offload(args, model, domain, rows: list) -> None:
    off = odyssey_config(args, model, domain, args.runs, "offload", run={"max_steps": 3},
                         eval={"interval": 0, "max_samples": args.micro_batch, "token_stats": False},
                         checkpoint={"save_final": False}, deepspeed={"config": "zero3_offload"},
                         tracking={"experiment": "bench-offload", "uri": args.uri})
    log3 = run_odyssey(args, off)
    rate = re.findall(r"step 3/3 loss \S+ lr \S+ ([\d,]+) tok/s", log3)
    rows.append(("zero3_offload, 3 steps", f"{rate[-1] if rate else '?'} tok/s at step 3"))


def main() -> int:
    import deepspeed
    import torch
    import transformers

    from bench.workload import SHAPES, build

    args = parse_args()
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    rows: list[tuple[str, str]] = [("device / stack", f"{device}; torch {torch.__version__}, transformers "
                                                      f"{transformers.__version__}, deepspeed {deepspeed.__version__}")]
    t0 = time.time()
    model, domain = build(args.out / args.shape, SHAPES[args.shape], args.seq_len, text_mb=args.text_mb)
    n_params, flops_token = model_flops(model, args.seq_len)
    rows.append(("model, data", f"{n_params / 1e9:.3f}B-param Llama, seq {args.seq_len}, micro-batch "
                                f"{args.micro_batch}, {args.dtype}; built + prepped in {time.time() - t0:.0f} s"))
    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"  # the GPU node carries mlflow-skinny, without a SQL store
    cfg = check_training(args, model, domain, flops_token, rows)
    check_resume_and_export(args, cfg, rows)
    check_offload(args, model, domain, rows)
    width = max(len(k) for k, _ in rows)
    print(f"\n| {'check':<{width}} | result |\n|{'-' * (width + 2)}|---|")
    for k, v in rows:
        print(f"| {k:<{width}} | {v} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
