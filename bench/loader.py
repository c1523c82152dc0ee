"""Loader throughput: the streaming training loader's tokens/s (MDS shards → mixed, shuffled micro-batches, as the
trainer builds it) against what one training step consumes, measured in the same run on the same shape: forward,
backward and AdamW step of the benchmark Llama, single process. Target: loader >= 20x training.

    python bench/loader.py [--shape cpu] [--seq-len 512] [--micro-batch 2] [--batches 400] [--workers 0]
(two streams mixed 50/50, as `data.streams` with proportions; one worker count per run)
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def loader_tokens_per_s(model: Path, domain: Path, work: Path, args, workers: int) -> float:
    import torch

    from data_prep.manifest import tokenizer_fingerprint
    from trainer.config import config_from_dict
    from trainer.data import build_train_loader, check_domains
    from trainer.model import load_tokenizer

    import shutil

    twin = domain.parent / f"{domain.name}_twin"  # a second stream (streaming refuses one folder read twice)
    if not twin.is_dir():
        shutil.copytree(domain, twin)
    cfg = config_from_dict({"model": {"path": str(model)},
                            "data": {"streams": [{"name": "a", "path": str(domain), "proportion": 0.5},
                                                 {"name": "b", "path": str(twin), "proportion": 0.5}],
                                     "micro_batch": args.micro_batch, "num_workers": workers},
                            "run": {"out_dir": str(work), "name": f"loader{workers}"}})
    domains, seq_len = check_domains(cfg, tokenizer_fingerprint(load_tokenizer(cfg.model)))
    loader = build_train_loader(cfg, domains, torch.device("cpu"))
    it = iter(loader)
    next(it)  # first batch: workers start, shards open
    t0, n = time.perf_counter(), 0
    while n < args.batches:
        try:
            next(it)
        except StopIteration:
            it = iter(loader)
            continue
        n += 1
    seconds = time.perf_counter() - t0
    del it, loader
    return n * args.micro_batch * seq_len / seconds


def train_tokens_per_s(model: Path, args) -> float:
    """Single-process forward + backward + AdamW step on the same shape and micro-batch (median of 5 after 2)."""
    import torch
    from transformers import AutoModelForCausalLM

    net = AutoModelForCausalLM.from_pretrained(model)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    x = torch.randint(0, net.config.vocab_size, (args.micro_batch, args.seq_len))
    times = []
    for i in range(7):
        t0 = time.perf_counter()
        net(input_ids=x, labels=x).loss.backward()
        opt.step()
        opt.zero_grad()
        times.append(time.perf_counter() - t0)
    return args.micro_batch * args.seq_len / statistics.median(times[2:])


def main() -> int:
    from bench.workload import SHAPES, build

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="cpu")
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--micro-batch", type=int, default=2)
    ap.add_argument("--batches", type=int, default=400)
    ap.add_argument("--workers", type=int, default=0, help="loader worker processes (Odyssey's CPU default: 0)")
    ap.add_argument("--workdir", help="keep the model and shards here (default: a temp folder)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="odyssey-loaderbench-") as tmp:
        work = Path(args.workdir) if args.workdir else Path(tmp)
        model, domain = build(work / args.shape, SHAPES[args.shape], args.seq_len)
        train = train_tokens_per_s(model, args)
        print(f"{args.shape} Llama, seq {args.seq_len}, micro-batch {args.micro_batch}, two mixed streams")
        print(f"| what | tokens/s | x training |\n|---|---:|---:|\n| one training step (1 process) | {train:,.0f} | 1 |")
        rate = loader_tokens_per_s(model, domain, work, args, args.workers)
        print(f"| streaming loader, {args.workers} worker(s) | {rate:,.0f} | **{rate / train:.0f}x** |")
        print("target: loader >= 20x training")
    return 0


if __name__ == "__main__":
    sys.exit(main())
