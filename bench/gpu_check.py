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


def main() -> int:
    import numpy as np
    import torch

    from bench.workload import SHAPES, build, token_rows
    from trainer.model import resolve_dtype
    from trainer.meter import detect_peak_tflops

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
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[tuple[str, str]] = []
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    import deepspeed
    import transformers

    rows.append(("device / stack", f"{device}; torch {torch.__version__}, transformers {transformers.__version__}, "
                                   f"deepspeed {deepspeed.__version__}"))

    t0 = time.time()
    model, domain = build(out / args.shape, SHAPES[args.shape], args.seq_len, text_mb=args.text_mb)
    n_params, flops_token = model_flops(model, args.seq_len)
    rows.append(("model, data", f"{n_params / 1e9:.3f}B-param Llama, seq {args.seq_len}, micro-batch "
                                f"{args.micro_batch}, {args.dtype}; built + prepped in {time.time() - t0:.0f} s"))
    uri = f"file://{out}/mlruns"
    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"  # the GPU node carries mlflow-skinny, without a SQL store
    timed_end = args.warmup + args.steps
    runs = out / "runs"
    runs.mkdir(exist_ok=True)
    cfg = odyssey_config(args, model, domain, runs, "main",
                         run={"max_steps": timed_end + 2, "halt_at_step": timed_end},
                         eval={"interval": timed_end, "max_samples": 32, "token_stats": True},
                         checkpoint={"save_final": True}, tracking={"experiment": "bench", "uri": uri})

    # 1. Odyssey: throughput, then (after the timed window) eval with token stats and a checkpoint
    log1 = run_odyssey(args, cfg)
    seconds = logged_seconds(uri, args.warmup, timed_end)
    tps = args.steps * args.micro_batch * args.accumulation * args.seq_len / seconds
    peak = detect_peak_tflops(args.dtype)
    mfu = f", MFU {tps * flops_token / (peak * 1e12):.1%} of {peak:.0f}" if peak else ""
    rows.append(("Odyssey ZeRO-3", f"{tps:,.0f} tok/s, {tps * flops_token / 1e12:.1f} TFLOP/s{mfu} "
                                   f"({args.steps} steps after {args.warmup})"))
    rows.append(("  setup it chose", " ".join(re.findall(r"\[odyssey\] device (.*)", log1)[-1:])))

    # 2. the bare loop, same model, data and DeepSpeed JSON
    rows_npy = out / "rows.npy"
    np.save(rows_npy, token_rows(domain))
    ds_json = resolved_ds_config(cfg, 1, out)
    bare = args.steps * args.micro_batch * args.accumulation * args.seq_len / time_peer(args, "bare", model,
                                                                                           rows_npy, ds_json)
    rows.append(("bare deepspeed loop", f"{bare:,.0f} tok/s; Odyssey / bare = {tps / bare:.3f}"))
    rows.append(("eval + token stats", seconds_in(log1, rf"eval @ step {timed_end} \(([\d.]+)s\)")))
    rows.append(("checkpoint save", seconds_in(log1, r"checkpoint \S+ \(([\d.]+)s\)")))

    # 3. resume for the last 2 steps, then export and load back
    log2 = run_odyssey(args, cfg, "--resume", "auto", "run.halt_at_step=null")
    done = "finished" if f"done: {timed_end + 2} steps" in log2 else "DID NOT FINISH"
    rows.append(("resume + 2 steps", f"{done}; load " + seconds_in(log2, r"loaded in ([\d.]+)s")))
    t0 = time.time()
    export_dir = out / "export"
    subprocess.run([sys.executable, "-m", "odyssey", "export", str(runs / "main"), str(export_dir), "--dtype",
                    "bf16", "--overwrite"], check=True, capture_output=True)
    exported = transformers.AutoModelForCausalLM.from_pretrained(export_dir, dtype="auto").to(
        "cuda" if torch.cuda.is_available() else "cpu")
    x = torch.from_numpy(np.load(rows_npy)[:1]).to(exported.device)
    with torch.no_grad():
        loss = exported(input_ids=x, labels=x).loss.item()
    rows.append(("export + from_pretrained", f"{time.time() - t0:.0f} s; loss of one sample {loss:.3f}"))

    # 4. a short zero3_offload run
    off = odyssey_config(args, model, domain, runs, "offload", run={"max_steps": 3},
                         eval={"interval": 0, "max_samples": args.micro_batch, "token_stats": False},
                         checkpoint={"save_final": False}, deepspeed={"config": "zero3_offload"},
                         tracking={"experiment": "bench-offload", "uri": uri})
    log3 = run_odyssey(args, off)
    rate = re.findall(r"step 3/3 loss \S+ lr \S+ ([\d,]+) tok/s", log3)
    rows.append(("zero3_offload, 3 steps", f"{rate[-1] if rate else '?'} tok/s at step 3"))

    width = max(len(k) for k, _ in rows)
    print(f"\n| {'check':<{width}} | result |\n|{'-' * (width + 2)}|---|")
    for k, v in rows:
        print(f"| {k:<{width}} | {v} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
