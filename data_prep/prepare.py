"""One domain source → packed MDS shards per split + manifest.

Documents stream from the source through filters (binary text files, empty/short, exact duplicates) to worker
processes that tokenize, then back, in order, to the packers and MDS writers: memory stays flat in corpus size.
Output is written to a temp folder and renamed into place (local) or uploaded with the manifest last (remote), so a
failed or interrupted prep leaves the previous output untouched and no half-written domain behind.
"""
from __future__ import annotations

import datetime as dt
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm import tqdm

from data_prep import remote
from data_prep.manifest import FORMAT_VERSION, MANIFEST, tokenizer_fingerprint, write_manifest
from data_prep.pack import SPLITS, Packer, SplitFractions, split_of, text_digest
from data_prep.shards import SplitWriters
from data_prep.sources import HF_PREFIX, SourceError, hf_spec, iter_docs, sha256_file, source_files, source_kind
from data_prep.text_files import MAX_BAD_BYTES, SNIFF_BYTES
from data_prep.tokenize import batches, document_bos, encode_all, load_tokenizer
from data_prep.errors import OdysseyError


class PrepError(OdysseyError, ValueError):
    """Prep cannot produce a usable domain (empty split, bad tokenizer, existing output)."""


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)))


@dataclass
class PrepOptions:
    fractions: SplitFractions = field(default_factory=SplitFractions)
    text_field: str = "text"
    min_chars: int = 1  # shorter documents (after stripping whitespace) are skipped and counted
    dedup: bool = False  # drop exact duplicates (by sha256 of the text; keeps 8 bytes per document in memory)
    compression: str | None = "zstd"
    size_limit: str = "64mb"  # per shard, before compression
    workers: int = field(default_factory=default_workers)  # tokenizer processes; 0 tokenizes in this process
    overwrite: bool = False
    progress: bool = True
    boundary: str = "file"  # text files: one document per file, per line, or per blank-line block (text_files.py)
    revision: str | None = None  # hf:// hub datasets: a branch, tag or commit
    max_bad_bytes: float = MAX_BAD_BYTES  # text files: share of non-UTF-8 bytes above which one is skipped as binary


def prepare_domain(source: str | Path, out_dir: str | Path, domain: str, tokenizer_path: str, seq_len: int,
                   opts: PrepOptions | None = None) -> dict:
    opts = opts or PrepOptions()
    kind = source_kind(source)  # raises SourceError for a missing/unsupported source
    if seq_len < 2:
        raise PrepError(f"seq_len must be at least 2, got {seq_len}")
    is_remote = remote.is_remote(out_dir)
    target = remote.join(str(out_dir), domain) if is_remote else Path(out_dir) / domain
    exists = remote.remote_has(target, MANIFEST) if is_remote else target.exists()
    if exists and not opts.overwrite:
        raise PrepError(f"{target} already exists; pass --overwrite to replace it")
    tokenizer = load_tokenizer(tokenizer_path)
    if is_remote:
        tmp = Path(tempfile.mkdtemp(prefix=f"odyssey-prep-{domain}-"))
    else:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        tmp = Path(out_dir) / f".{domain}.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    try:
        manifest = _write(source, kind, tmp, domain, tokenizer, seq_len, opts)
        if is_remote:
            remote.upload_domain(tmp, target)
            shutil.rmtree(tmp)
        else:
            swap_into_place(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def swap_into_place(tmp: Path, final: Path) -> None:
    if not final.exists():
        tmp.rename(final)
        return
    old = final.with_name(f".{final.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old)


@dataclass
class SourceStats:
    docs_read: int = 0
    docs_kept: int = 0
    skipped_short: int = 0
    skipped_duplicate: int = 0
    skipped_binary: int = 0  # text files skipped as binary (a NUL byte, or too many bad bytes): files, not documents
    non_utf8_docs: int = 0  # kept, with invalid bytes replaced by U+FFFD
    own_split_docs: int = 0  # kept documents whose split the source named (then no document is split by hash)


def _filtered(source, opts: PrepOptions, stats: SourceStats):
    """(text, split) for each document that passes the filters."""
    seen: set[bytes] = set()
    for doc in iter_docs(source, opts.text_field, opts.boundary, opts.revision, opts.max_bad_bytes):
        if doc.binary:
            stats.skipped_binary += 1
            continue
        stats.docs_read += 1
        stats.non_utf8_docs += doc.bad_bytes
        if len(doc.text) < opts.min_chars or len(doc.text.strip()) < opts.min_chars:
            stats.skipped_short += 1
            continue
        digest = text_digest(doc.text)
        if opts.dedup:
            if digest in seen:
                stats.skipped_duplicate += 1
                continue
            seen.add(digest)
        stats.docs_kept += 1
        stats.own_split_docs += doc.split is not None
        yield doc.text, doc.split or split_of(doc.text, opts.fractions, digest)


def _write(source, kind, tmp: Path, domain: str, tokenizer, seq_len: int, opts: PrepOptions) -> dict:
    packers = {s: Packer(seq_len) for s in SPLITS}
    stats = SourceStats()
    started = time.time()
    n_tokens, tokenizer_json = 0, tokenizer.backend_tokenizer.to_str()
    work = batches(_filtered(source, opts, stats))
    with tqdm(desc=f"prep {domain}", unit="doc", disable=not opts.progress, mininterval=1.0) as bar, \
            SplitWriters(tmp, SPLITS, seq_len, compression=opts.compression, size_limit=opts.size_limit) as writers:
        for encoded in encode_all(work, tokenizer_json, tokenizer.eos_token_id, opts.workers, document_bos(tokenizer)):
            for split, (ids, n_docs) in encoded.items():
                for row in packers[split].add(ids, n_docs):
                    writers.write(split, row)
                n_tokens += len(ids)
                bar.update(n_docs)
            elapsed = max(time.time() - started, 1e-9)
            bar.set_postfix_str(f"{n_tokens / elapsed:,.0f} tok/s", refresh=False)
        for p in packers.values():
            p.finish()
    split_stats = {s: asdict(p.stats) for s, p in packers.items()}
    _check_splits(domain, source, seq_len, opts, stats, split_stats)
    seconds = time.time() - started
    return _manifest(source, kind, domain, tokenizer, seq_len, opts, stats, split_stats, seconds, n_tokens, tmp)


def _check_splits(domain: str, source, seq_len: int, opts: PrepOptions, stats: SourceStats, split_stats: dict) -> None:
    """Every split that should have data has at least one full sample: train always; val/test where their fraction
    is above 0, or, for a source with its own splits, where the source put documents."""
    if stats.docs_kept == 0 and stats.docs_read == 0 and stats.skipped_binary:
        raise PrepError(f"domain '{domain}': every file of source {source} is binary ({stats.skipped_binary} skipped: "
                        f"a NUL byte in the first {SNIFF_BYTES // 1024} KiB, or over {opts.max_bad_bytes:.0%} of "
                        f"bytes not UTF-8; max_bad_bytes (--max-bad-bytes) sets that share)")
    if stats.docs_kept == 0:
        raise PrepError(f"domain '{domain}': source {source} holds no non-empty documents "
                        f"({skip_summary({**asdict(stats), 'min_chars': opts.min_chars})})")
    if stats.own_split_docs:
        wanted = {split: split == "train" or st["docs"] > 0 for split, st in split_stats.items()}
    else:
        wanted = {"train": True, "val": opts.fractions.val > 0, "test": opts.fractions.test > 0}
    for split, st in split_stats.items():
        if wanted[split] and st["samples"] == 0:
            raise PrepError(
                f"domain '{domain}': {split} split has no full sample of {seq_len} tokens "
                f"({st['docs']} docs, {st['dropped_tokens']} tokens); add text or lower --seq-len"
            )


def _manifest(source, kind: str, domain: str, tokenizer, seq_len: int, opts: PrepOptions, stats: SourceStats,
              split_stats: dict, seconds: float, n_tokens: int, tmp: Path) -> dict:
    is_local_path = not str(source).startswith(HF_PREFIX)
    manifest = {
        "format_version": FORMAT_VERSION,
        "domain": domain,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "seq_len": seq_len,
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "splits_from": "source" if stats.own_split_docs else "document hash",
        "split_fractions": None if stats.own_split_docs else {"val": opts.fractions.val, "test": opts.fractions.test},
        "splits": split_stats,
        "source": {
            "path": str(Path(source).resolve()) if is_local_path else str(source),
            "kind": kind,
            "text_field": opts.text_field if kind not in ("text_dir", "archive") else None,
            "boundary": opts.boundary if kind in ("text_dir", "archive") else None,
            "revision": opts.revision,
            **asdict(stats),
            "min_chars": opts.min_chars,
            "dedup": opts.dedup,
            "max_bad_bytes": opts.max_bad_bytes if kind in ("text_dir", "archive") else None,
            "files": [
                {"path": _rel(f, source), "bytes": f.stat().st_size, "sha256": sha256_file(f)}
                for f in source_files(source)
            ],
        },
        "compression": opts.compression,
        "size_limit": opts.size_limit,
        "seconds": round(seconds, 2),
        "tokens_per_s": round(n_tokens / max(seconds, 1e-9)),
    }
    write_manifest(tmp, manifest)
    return manifest


def skip_summary(counts: dict) -> str:
    """Every document or file prep left out or altered, from the manifest's `source` counts: the one wording of the
    summary line `odyssey prep` prints and of the error for a source with nothing left."""
    return (f"kept {counts['docs_kept']} of {counts['docs_read']} documents; skipped {counts['skipped_short']} "
            f"shorter than {counts['min_chars']} chars, {counts['skipped_duplicate']} duplicates, "
            f"{counts['skipped_binary']} binary files; {counts['non_utf8_docs']} documents with non-UTF-8 bytes "
            f"replaced by U+FFFD")


def _rel(f: Path, source) -> str:
    base = Path(hf_spec(str(source))[0]) if str(source).startswith(HF_PREFIX) else Path(source)
    return f.relative_to(base).as_posix() if base.is_dir() else f.name


__all__ = ["prepare_domain", "PrepOptions", "PrepError", "SourceError"]
