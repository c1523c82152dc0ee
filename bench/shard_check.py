"""Cost of the training start-up check of a domain's shards (data_prep/validate.py: require_valid, run once per node
by its local rank 0): sizes only, xxh64 of the compressed shards (no decompressed copies yet), and xxh64 of the
decompressed copies training reads once streaming has made them. Each timed twice: from a cold page cache where this
machine lets us drop it (root), then warm.

The domain is synthetic: packed rows of --seq-len int32 token ids drawn with a Zipf law over --vocab (about the
entropy of real text tokens, so zstd compresses it about as much), written by the same writer `odyssey prep` uses.

    python bench/shard_check.py --gb 10 --work /tmp/odyssey-shard-check
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from data_prep.shards import SplitWriters  # noqa: E402
from data_prep.validate import require_valid  # noqa: E402


def build(domain: Path, gb: float, seq_len: int, vocab: int) -> int:
    """Write the synthetic domain (train split only); returns its sample count."""
    rng = np.random.default_rng(0)
    ranks = np.arange(1, vocab + 1, dtype=np.float64)
    cdf = np.cumsum(1.0 / ranks) / np.sum(1.0 / ranks)
    pool = np.searchsorted(cdf, rng.random(1 << 26)).astype(np.int32)  # 64M tokens: rows are cut from it at random
    rows = int(gb * 2**30 / (4 * seq_len))
    with SplitWriters(domain, ("train",), seq_len) as writers:
        for start in rng.integers(0, len(pool) - seq_len, rows):
            writers.write("train", pool[start:start + seq_len])
    manifest = {"domain": domain.name, "seq_len": seq_len, "tokenizer": {"vocab_size": vocab},
                "splits": {"train": {"samples": rows}}}
    (domain / "manifest.json").write_text(json.dumps(manifest))
    return rows


def drop_page_cache() -> bool:
    subprocess.run(["sync"], check=False)
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def timed(domain: Path, hashes: bool, cold: bool) -> float | None:
    if cold and not drop_page_cache():
        return None
    t0 = time.perf_counter()
    require_valid(domain, splits=("train",), hashes=hashes)
    return time.perf_counter() - t0


def decompress_all(domain: Path) -> None:
    """What streaming leaves beside each compressed shard on first use: its decompressed copy."""
    from streaming.base.compression import decompress

    split = domain / "train"
    for shard in json.loads((split / "index.json").read_text())["shards"]:
        data = decompress(shard["compression"], (split / shard["zip_data"]["basename"]).read_bytes())
        (split / shard["raw_data"]["basename"]).write_bytes(data)


def sizes(domain: Path) -> tuple[int, int]:
    """(compressed bytes, decompressed bytes) of the split, from its index."""
    shards = json.loads((domain / "train" / "index.json").read_text())["shards"]
    return sum(s["zip_data"]["bytes"] for s in shards), sum(s["raw_data"]["bytes"] for s in shards)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gb", type=float, default=10.0, help="decompressed token bytes, GiB")
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--work", default="/tmp/odyssey-shard-check")
    ap.add_argument("--keep", action="store_true", help="keep the domain for another run")
    args = ap.parse_args()
    domain = Path(args.work) / "big"
    if not (domain / "manifest.json").is_file():
        shutil.rmtree(domain, ignore_errors=True)
        t0 = time.perf_counter()
        rows = build(domain, args.gb, args.seq_len, args.vocab)
        print(f"built {rows:,} rows in {time.perf_counter() - t0:.0f}s", flush=True)
    for raw in (domain / "train").glob("*.mds"):
        raw.unlink()
    zipped, raw = sizes(domain)
    print(f"domain: {zipped / 2**30:.2f} GiB compressed (zstd), {raw / 2**30:.2f} GiB decompressed", flush=True)
    print("| check | cold cache (s) | warm (s) | warm GiB/s hashed |\n|---|---:|---:|---:|", flush=True)
    for what, hashes, setup in (("sizes only", False, None), ("xxh64, compressed shards", True, None),
                                ("xxh64, decompressed copies", True, decompress_all)):
        if setup:
            setup(domain)
        cold, warm = timed(domain, hashes, cold=True), timed(domain, hashes, cold=False)
        hashed = (raw if setup else zipped) if hashes else 0
        print(f"| {what} | {'-' if cold is None else f'{cold:.2f}'} | {warm:.2f} | "
              f"{f'{hashed / warm / 2**30:.2f}' if hashed else '-'} |", flush=True)
    if not args.keep:
        shutil.rmtree(domain)
    return 0


if __name__ == "__main__":
    sys.exit(main())
