"""Prep throughput and memory: `odyssey prep` against the common recipe and the tokenizer's raw limit, same corpus,
same run.

  (a) recipe: datasets.load_dataset(json) → .map(tokenize, batched, num_proc=2) → group_texts → MDSWriter
  (b) limit:  tokenizer.backend_tokenizer.encode_batch over the corpus (Rust, all cores), tokens only, nothing written
  odyssey:    prepare_domain(jsonl) with the default worker count

Then peak RSS of `odyssey prep` (whole process tree) on the corpus and on one 10× larger. Prints ratios; targets:
odyssey ≥ 2× (a), ≥ 0.7× (b), RSS flat in corpus size.

    python bench/prep_throughput.py [--mb 8] [--tokenizer DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SEQ_LEN = 2048


def corpus_docs(target_bytes: int) -> list[str]:
    """Real text: the demo's cached domains if present, else the Python stdlib; cycled to reach target_bytes."""
    from demo.assets import CACHE, code_docs

    texts = [p.read_text(errors="replace") for p in sorted((CACHE / "text").rglob("*.txt"))]
    if not texts:
        texts = list(code_docs())
    docs, size, i = [], 0, 0
    while size < target_bytes:
        d = texts[i % len(texts)]
        if i >= len(texts):
            d = f"[copy {i // len(texts)}] " + d  # distinct documents, same statistics
        docs.append(d)
        size += len(d.encode())
        i += 1
    return docs


def write_jsonl(docs: list[str], path: Path) -> Path:
    with open(path, "w") as f:
        for d in docs:
            f.write(json.dumps({"text": d}) + "\n")
    return path


def tokenizer_dir(arg: str | None, tmp: Path, docs: list[str]) -> Path:
    if arg:
        return Path(arg)
    from demo.assets import CACHE

    smol = CACHE / "models" / "SmolLM2-135M"
    if (smol / "tokenizer.json").is_file():
        return smol
    from tests.tiny import build_tokenizer

    return build_tokenizer(tmp / "tok", docs[:2000], vocab_size=8192)


def run_recipe(jsonl: Path, tok_path: Path, out: Path, cache: Path) -> int:
    """The common recipe, as in HF's run_clm.py group_texts + streaming's MDSWriter."""
    import datasets
    import numpy as np
    from streaming import MDSWriter
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tok_path)
    eos = tok.eos_token_id
    ds = datasets.load_dataset("json", data_files=str(jsonl), split="train", cache_dir=str(cache))

    def tokenize(batch):
        ids = tok(batch["text"], add_special_tokens=False)["input_ids"]
        return {"input_ids": [x + [eos] for x in ids]}

    ds = ds.map(tokenize, batched=True, num_proc=2, remove_columns=["text"])

    def group_texts(batch):
        flat = [t for ids in batch["input_ids"] for t in ids]
        n = len(flat) // SEQ_LEN * SEQ_LEN
        return {"tokens": [flat[i:i + SEQ_LEN] for i in range(0, n, SEQ_LEN)]}

    ds = ds.map(group_texts, batched=True, num_proc=2, remove_columns=["input_ids"])
    n = 0
    with MDSWriter(out=str(out), columns={"tokens": f"ndarray:int32:{SEQ_LEN}"}, compression="zstd") as w:
        for row in ds:
            w.write({"tokens": np.asarray(row["tokens"], dtype=np.int32)})
            n += SEQ_LEN
    return n


def run_raw(docs: list[str], backend) -> int:
    """Encoding only: the tokenizer is loaded before the clock starts."""
    n = 0
    for i in range(0, len(docs), 1000):
        n += sum(len(e.ids) for e in backend.encode_batch(docs[i:i + 1000], add_special_tokens=False))
    return n


def run_odyssey(jsonl: Path, tok_path: Path, out: Path) -> int:
    from data_prep.pack import SplitFractions
    from data_prep.prepare import PrepOptions, prepare_domain

    m = prepare_domain(jsonl, out, "bench", str(tok_path), SEQ_LEN,
                       PrepOptions(progress=False, fractions=SplitFractions(val=0, test=0.01)))
    return sum(s["tokens"] + s["dropped_tokens"] for s in m["splits"].values())


def timed(fn, *args) -> tuple[float, int]:
    t0 = time.perf_counter()
    n = fn(*args)
    return time.perf_counter() - t0, n


def peak_tree_rss(cmd: list[str]) -> tuple[int, float]:
    """Run cmd; sample the RSS of it and all its descendants every 20 ms; (peak bytes, seconds)."""
    import psutil

    t0 = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = 0
    p = psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            rss = p.memory_info().rss + sum(c.memory_info().rss for c in p.children(recursive=True))
            peak = max(peak, rss)
        except psutil.Error:
            pass
        time.sleep(0.02)
    if proc.returncode:
        raise RuntimeError(proc.stderr.read().decode()[-2000:])
    return peak, time.time() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=32.0, help="corpus size for the throughput comparison")
    ap.add_argument("--rss-mb", type=float, default=8.0, help="corpus size for the RSS run (and 10x that)")
    ap.add_argument("--tokenizer", help="tokenizer folder (default: SmolLM2's if the demo cached it)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="odyssey-bench-"))
    try:
        docs = corpus_docs(int(args.mb * 1e6))
        tok = tokenizer_dir(args.tokenizer, tmp, docs)
        jsonl = write_jsonl(docs, tmp / "corpus.jsonl")
        print(f"corpus: {len(docs)} docs, {jsonl.stat().st_size / 1e6:.1f} MB; tokenizer {tok}; "
              f"{len(os.sched_getaffinity(0))} cores; seq_len {SEQ_LEN}")
        # Imports and the tokenizer load happen before any clock starts, so each timing is the work itself.
        import datasets  # noqa: F401
        import streaming  # noqa: F401
        from transformers import AutoTokenizer

        t_raw, n_raw = timed(run_raw, docs, AutoTokenizer.from_pretrained(tok).backend_tokenizer)
        t_ody, n_ody = timed(run_odyssey, jsonl, tok, tmp / "ody")
        t_rec, n_rec = timed(run_recipe, jsonl, tok, tmp / "recipe", tmp / "hf_cache")
        rows = [("raw encode_batch (b)", t_raw, n_raw), ("recipe: datasets.map num_proc=2 (a)", t_rec, n_rec),
                ("odyssey prep", t_ody, n_ody)]
        for name, t, n in rows:
            print(f"  {name:<38} {t:7.1f} s  {n / t:>12,.0f} tok/s")
        ody = n_ody / t_ody
        print(f"odyssey / recipe (a): {ody / (n_rec / t_rec):.2f}x   (target >= 2x)")
        print(f"odyssey / raw encode_batch (b): {ody / (n_raw / t_raw):.2f}x   (target >= 0.7x)")

        # Both RSS runs use 4 MB shards, so both write several: an MDS shard is held in memory until it is full,
        # which bounds prep's memory by the shard size limit, not by the corpus.
        small_docs = corpus_docs(int(args.rss_mb * 1e6))
        small = write_jsonl(small_docs, tmp / "rss1.jsonl")
        big = write_jsonl(small_docs * 10, tmp / "rss10.jsonl")
        rss = {}
        for name, src in (("1x", small), ("10x", big)):
            out = tmp / f"rss_{name}"
            cmd = [sys.executable, "-m", "odyssey", "prep", str(src), "--domain", "d", "--out", str(out),
                   "--tokenizer", str(tok), "--seq-len", str(SEQ_LEN), "--quiet", "--test", "0.01", "--val", "0",
                   "--size-limit", "4mb"]
            rss[name], secs = peak_tree_rss(cmd)
            print(f"  peak RSS, prep of {src.stat().st_size / 1e6:6.1f} MB: {rss[name] / 2**20:7.0f} MiB "
                  f"(process tree, {secs:.0f} s)")
        print(f"peak RSS 10x / 1x: {rss['10x'] / rss['1x']:.2f}   (target: flat, ~1.0)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
