"""One domain source → packed MDS shards per split + manifest, written to a temp folder and renamed into place at the end.

A failed or interrupted prep leaves the previous output (if any) untouched and no half-written domain behind.
"""
from __future__ import annotations

import datetime as dt
import shutil
import time
from dataclasses import asdict
from pathlib import Path

from tqdm import tqdm

from data_prep.manifest import FORMAT_VERSION, tokenizer_fingerprint, write_manifest
from data_prep.pack import SPLITS, Packer, SplitFractions, split_of, tokenize_batches
from data_prep.shards import SplitWriters
from data_prep.sources import SourceError, iter_docs, sha256_file, source_files, source_kind


class PrepError(ValueError):
    """Prep cannot produce a usable domain (empty split, bad tokenizer, existing output)."""


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise PrepError(f"cannot load tokenizer from {path}: {str(err).splitlines()[0]}") from None
    if not tok.is_fast:
        raise PrepError(f"tokenizer at {path} is not a fast tokenizer")
    if tok.eos_token_id is None:
        raise PrepError(f"tokenizer at {path} has no EOS token; packing needs one between documents")
    return tok


def prepare_domain(
    source: str | Path,
    out_dir: str | Path,
    domain: str,
    tokenizer_path: str,
    seq_len: int,
    fractions: SplitFractions = SplitFractions(),
    text_field: str = "text",
    compression: str | None = "zstd",
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    source, out_dir = Path(source), Path(out_dir)
    kind = source_kind(source)  # raises SourceError for a missing/unsupported source
    if seq_len < 2:
        raise PrepError(f"seq_len must be at least 2, got {seq_len}")
    final = out_dir / domain
    if final.exists() and not overwrite:
        raise PrepError(f"{final} already exists; pass --overwrite to replace it")
    tokenizer = load_tokenizer(tokenizer_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".{domain}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        manifest = _write(source, kind, tmp, domain, tokenizer, seq_len, fractions, text_field, compression, progress)
        if final.exists():
            old = out_dir / f".{domain}.old"
            shutil.rmtree(old, ignore_errors=True)
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old)
        else:
            tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _write(source, kind, tmp, domain, tokenizer, seq_len, fractions, text_field, compression, progress) -> dict:
    eos = tokenizer.eos_token_id
    packers = {s: Packer(seq_len, eos) for s in SPLITS}
    started = time.time()
    docs = iter_docs(source, text_field)
    bar = tqdm(desc=f"prep {domain}", unit="doc", disable=not progress, mininterval=1.0)
    n_tokens = 0
    with SplitWriters(tmp, SPLITS, seq_len, compression=compression) as writers:
        for doc, ids in tokenize_batches(docs, tokenizer):
            split = split_of(doc.text, fractions)
            for row in packers[split].add(ids):
                writers.write(split, row)
            n_tokens += len(ids) + 1
            bar.update(1)
            bar.set_postfix_str(f"{n_tokens / max(time.time() - started, 1e-9):,.0f} tok/s", refresh=False)
        for p in packers.values():
            p.finish()
    bar.close()
    stats = {s: asdict(p.stats) for s, p in packers.items()}
    if sum(st["docs"] for st in stats.values()) == 0:
        raise PrepError(f"domain '{domain}': source {source} holds no non-empty documents")
    wanted = {"train": True, "val": fractions.val > 0, "test": fractions.test > 0}
    for split, st in stats.items():
        if wanted[split] and st["samples"] == 0:
            raise PrepError(
                f"domain '{domain}': {split} split has no full sample of {seq_len} tokens "
                f"({st['docs']} docs, {st['dropped_tokens']} tokens); add text or lower --seq-len"
            )
    manifest = {
        "format_version": FORMAT_VERSION,
        "domain": domain,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "seq_len": seq_len,
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "split_fractions": {"val": fractions.val, "test": fractions.test},
        "splits": stats,
        "source": {
            "path": str(source.resolve()),
            "kind": kind,
            "text_field": text_field if kind in ("jsonl", "parquet", "hf") else None,
            "files": [
                {"path": str(f.relative_to(source) if source.is_dir() else f.name), "bytes": f.stat().st_size,
                 "sha256": sha256_file(f)}
                for f in source_files(source)
            ],
        },
        "compression": compression,
        "seconds": round(time.time() - started, 2),
    }
    write_manifest(tmp, manifest)
    return manifest


__all__ = ["prepare_domain", "PrepError", "SourceError", "load_tokenizer"]
