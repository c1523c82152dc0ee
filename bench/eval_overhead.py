"""Cost of token statistics over a loss-only eval, under ZeRO-3 with 2 ranks, in the same run.

Alternates, REPEATS times each: (a) loss-only `evaluate`, (b) `evaluate(per_token=True)` plus rank 0's `summarize` and
Parquet table (what every eval with token_stats computes; the PNG and MLflow upload are timed separately). Prints the
median of each and the ratio b/a; target ≤ 1.10.

    python bench/eval_overhead.py [--model DIR] [--samples 32] [--seq-len 256]
(it re-launches itself under `deepspeed --num_gpus 2`). Default model: SmolLM2-135M from the demo cache, else a tiny Llama.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
REPEATS = 5


def setup(args, tmp: Path) -> tuple[Path, Path]:
    """A model folder and a prepared domain to evaluate."""
    from data_prep.pack import SplitFractions
    from data_prep.prepare import PrepOptions, prepare_domain
    from demo.assets import CACHE, code_docs
    from tests import tiny

    model = Path(args.model) if args.model else CACHE / "models" / "SmolLM2-135M"
    if not (model / "config.json").is_file():
        model = tmp / "tiny"
        docs = tiny.prose_docs(300)
        tiny.build_tokenizer(model, docs)
        from transformers import AutoTokenizer

        tiny.build_tiny_llama(model, len(AutoTokenizer.from_pretrained(model)))
    src = tiny.write_text_dir(tmp / "src", list(code_docs())[:400])
    prepare_domain(src, tmp / "domains", "code", str(model), args.seq_len,
                   PrepOptions(progress=False, workers=0, fractions=SplitFractions(val=0.0, test=0.3)))
    return model, tmp / "domains" / "code"


def worker(args) -> None:
    import numpy as np
    import torch

    from trainer.config import config_from_dict
    from trainer.data import check_domains, open_eval_sets
    from trainer.dist import init_distributed
    from trainer.engine import build_engine, fill_ds_config
    from trainer.evaluate import evaluate
    from trainer.model import load_model, load_tokenizer
    from analysis.plots import token_report
    from analysis.tokenstats import Vocab, summarize, table_frame
    from data_prep.manifest import tokenizer_fingerprint

    dist = init_distributed()
    rank, world = dist.rank, dist.world
    cfg = config_from_dict({"model": {"path": args.model}, "data": {"streams": [{"name": "code", "path": args.domain}]},
                            "run": {"out_dir": args.tmp, "max_steps": 1}})
    tok = load_tokenizer(cfg.model)
    domains, _ = check_domains(cfg, tokenizer_fingerprint(tok), dist)
    engine, *_ = build_engine(cfg, fill_ds_config(cfg, world), lambda: load_model(cfg.model), 1)
    sets = open_eval_sets(domains, "test")
    vocab = Vocab.from_tokenizer(tok) if rank == 0 else None
    base = evaluate(engine, sets, dist, args.micro_batch, args.samples, per_token=True)["code"]
    times = {"loss_only": [], "token_stats": [], "report": []}
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        evaluate(engine, sets, dist, args.micro_batch, args.samples)
        times["loss_only"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        r = evaluate(engine, sets, dist, args.micro_batch, args.samples, per_token=True)["code"]
        if rank == 0:
            s = summarize(r.targets, base.losses, r.losses * np.float32(1.01), vocab)
            table_frame(s, vocab).to_parquet(Path(args.tmp) / "t.parquet")
        torch.distributed.barrier()
        times["token_stats"].append(time.perf_counter() - t0)
        if rank == 0:
            t0 = time.perf_counter()
            token_report(s, "code", 1, Path(args.tmp) / "t.png")
            times["report"].append(time.perf_counter() - t0)
    if rank == 0:
        med = {k: statistics.median(v) for k, v in times.items()}
        print(f"model {args.model}, {world} ranks ZeRO-3, {args.samples} samples x {r.targets.shape[1] + 1} tokens, "
              f"micro-batch {args.micro_batch}, median of {REPEATS}")
        print(f"  (a) loss-only eval            {med['loss_only']:.3f} s")
        print(f"  (b) eval + token statistics   {med['token_stats']:.3f} s")
        print(f"  token stats / loss-only: {med['token_stats'] / med['loss_only']:.3f}x   (target <= 1.10x)")
        print(f"  (PNG report on rank 0, not in (b): {med['report']:.3f} s)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model")
    ap.add_argument("--domain")
    ap.add_argument("--tmp")
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--micro-batch", type=int, default=4)
    ap.add_argument("--local_rank", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if "RANK" in os.environ:
        worker(args)
        return 0
    with tempfile.TemporaryDirectory(prefix="odyssey-evalbench-") as tmp:
        model, domain = setup(args, Path(tmp))
        launcher = str(Path(sys.executable).parent / "deepspeed")
        return subprocess.call([launcher, "--num_gpus", "2", __file__, "--model", str(model), "--domain", str(domain),
                                "--tmp", tmp, "--samples", str(args.samples), "--seq-len", str(args.seq_len),
                                "--micro-batch", str(args.micro_batch)], env={**os.environ, "DS_ACCELERATOR": "cpu"})


if __name__ == "__main__":
    sys.exit(main())
