"""Check a prepared domain against its own index and manifest.

cheap (every training start, once per node): manifest, each split's index.json, every shard file present with the
    recorded size, seq_len, sample counts, (given a tokenizer) the vocabulary hash, and (data.verify_hashes) the
    xxh64 of every file training reads: a shard's decompressed copy where streaming made one, else the shard.
deep (`odyssey prep --validate`): also every shard file's recorded hashes, and every token id within the vocabulary.

Problems are one line each and name the file, e.g. `prose/test/shard.00000.mds.zstd: 1200 bytes, index says 3522`.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np

from data_prep.console import log
from data_prep.manifest import ManifestError, check_tokenizer, read_manifest
from data_prep.pack import SPLITS
from data_prep.shards import INPUT_IDS, TOKENS


class ValidationError(ManifestError):
    """A prepared domain whose files disagree with its index or manifest."""


def _check_file(path: Path, info: dict, name: str, hashes: bool, all_algos: bool, required: bool) -> list[str]:
    if not path.is_file():
        return [f"{name}: missing"] if required else []
    problems = []
    size = path.stat().st_size
    if size != info["bytes"]:
        problems.append(f"{name}: {size} bytes, index says {info['bytes']} (truncated or replaced)")
    elif hashes and info.get("hashes"):
        from streaming.base.hashing import get_hash

        data = path.read_bytes()
        recorded = info["hashes"]
        algos = list(recorded) if all_algos else ["xxh64" if "xxh64" in recorded else next(iter(recorded))]
        for algo in algos:
            want = recorded[algo]
            if get_hash(algo, data) != want:
                problems.append(f"{name}: {algo} does not match the index (corrupt)")
                break
    return problems


def _check_shard(split_dir: Path, shard: dict, where: str, hashes: bool, deep: bool, rederive: bool) -> list[str]:
    """One shard's files. Training reads the raw file: the shard itself, or for a compressed shard the copy streaming
    decompressed beside it on first use (then the compressed file is not read again). So the fast check hashes the
    raw file where it exists and the compressed one where it does not; deep checks every file with every algorithm.
    A decompressed copy that fails (bits flipped in a cache, a torn write) is a problem, or with `rederive` is
    rebuilt from the compressed file once that passes its own check: what streaming would have written."""
    raw, zipped = shard["raw_data"], shard.get("zip_data")
    if not zipped:
        return _check_file(split_dir / raw["basename"], raw, f"{where}/{raw['basename']}", hashes, deep, True)
    zip_name = f"{where}/{zipped['basename']}"
    raw_path = split_dir / raw["basename"]
    if not raw_path.is_file():
        return _check_file(split_dir / zipped["basename"], zipped, zip_name, hashes, deep, True)
    raw_bad = _check_file(raw_path, raw, f"{where}/{raw['basename']}", hashes, deep, True)
    if deep or (raw_bad and not rederive):
        zip_bad = _check_file(split_dir / zipped["basename"], zipped, zip_name, hashes or deep, deep, True)
        hint = [f"{raw_bad[0]}: a decompressed copy; delete it and streaming decompresses {zipped['basename']} "
                "again"] if raw_bad and not zip_bad else raw_bad
        return zip_bad + hint
    if not raw_bad:
        return []
    zip_bad = _check_file(split_dir / zipped["basename"], zipped, zip_name, True, False, True)
    if zip_bad:
        return zip_bad
    _rederive(split_dir, shard)
    log(f"{raw_bad[0]}: rebuilt from {zipped['basename']}, which matches the index", every_rank=True)
    return []


def _rederive(split_dir: Path, shard: dict) -> None:
    """Decompress the shard's verified compressed file over its raw copy: written beside it, then renamed over it,
    so a job that has the old copy open keeps reading the file it opened."""
    from streaming.base.compression import decompress

    data = decompress(shard["compression"], (split_dir / shard["zip_data"]["basename"]).read_bytes())
    raw = split_dir / shard["raw_data"]["basename"]
    tmp = raw.with_name(f".{raw.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, raw)
    finally:
        tmp.unlink(missing_ok=True)


def _token_range(split_dir: Path, shard: dict, vocab_size: int, name: str) -> list[str]:
    """Decode every sample of one shard through streaming's own reader and check ids lie in [0, vocab_size)."""
    from streaming.base.compression import decompress
    from streaming.base.format import reader_from_json

    raw_name = shard["raw_data"]["basename"]
    with tempfile.TemporaryDirectory() as tmp:
        raw = split_dir / raw_name
        if shard.get("zip_data") and not raw.is_file():
            data = decompress(shard["compression"], (split_dir / shard["zip_data"]["basename"]).read_bytes())
            raw = Path(tmp) / raw_name
            raw.write_bytes(data)
        reader = reader_from_json(str(raw.parent), None, shard)
        lo, hi = 0, 0
        for i in range(shard["samples"]):
            sample = reader.decode_sample(reader.get_sample_data(i))
            ids = sample[TOKENS] if TOKENS in sample else sample[INPUT_IDS]
            lo, hi = min(lo, int(np.min(ids))), max(hi, int(np.max(ids)))
    if lo < 0 or hi >= vocab_size:
        return [f"{name}: token ids span [{lo}, {hi}], outside the tokenizer's vocabulary of {vocab_size}"]
    return []


def validate_domain(domain_dir: str | Path, deep: bool = False, fingerprint: dict | None = None,
                    label: str | None = None, splits: tuple[str, ...] = SPLITS, file_hashes: bool | None = None,
                    rederive: bool = False) -> list[str]:
    """All problems found, one line each (empty: the domain is sound). `fingerprint`: the tokenizer's, to compare.
    `rederive`: a decompressed copy that fails its check is rebuilt from its verified compressed shard (_check_shard)."""
    domain_dir = Path(domain_dir)
    label = label or domain_dir.name
    file_hashes = deep if file_hashes is None else file_hashes
    try:
        manifest = read_manifest(domain_dir)
        if fingerprint is not None:
            check_tokenizer(manifest, fingerprint, f"domain '{label}' ({domain_dir})")
    except ManifestError as err:
        return [str(err)]
    seq_len, vocab = manifest["seq_len"], manifest["tokenizer"]["vocab_size"]
    problems: list[str] = []
    for split in splits:
        split_dir = domain_dir / split
        index_path = split_dir / "index.json"
        want = manifest["splits"].get(split, {}).get("samples", 0)
        if not index_path.is_file():
            if want:
                problems.append(f"{label}/{split}/index.json: missing")
            continue
        try:
            shards = json.loads(index_path.read_text())["shards"]
        except (json.JSONDecodeError, KeyError) as err:
            problems.append(f"{label}/{split}/index.json: unreadable ({err})")
            continue
        if sum(s["samples"] for s in shards) != want:
            problems.append(f"{label}/{split}: index holds {sum(s['samples'] for s in shards)} samples, "
                            f"manifest says {want}")
        for shard in shards:
            names = shard["column_names"]
            enc = shard["column_encodings"][names.index(TOKENS)] if TOKENS in names else None  # task rows vary
            if enc is not None and int(enc.rsplit(":", 1)[1]) != seq_len:
                problems.append(f"{label}/{split}/{shard['raw_data']['basename']}: rows of {enc}, "
                                f"manifest seq_len is {seq_len}")
            shard_problems = _check_shard(split_dir, shard, f"{label}/{split}", file_hashes, deep, rederive)
            problems += shard_problems
            if deep and not shard_problems:
                first = (shard.get("zip_data") or shard["raw_data"])["basename"]
                problems += _token_range(split_dir, shard, vocab, f"{label}/{split}/{first}")
    return problems


def require_valid(domain_dir: str | Path, fingerprint: dict | None = None, label: str | None = None,
                  splits: tuple[str, ...] = SPLITS, hashes: bool = True) -> None:
    """Start-up validation; raises ValidationError with the first problem (and how many more). `hashes` checks each
    file training reads against its index hash with the fastest algorithm recorded (xxh64: IO-bound), never token
    ids; a corrupt decompressed copy is rebuilt from its verified compressed shard."""
    problems = validate_domain(domain_dir, deep=False, fingerprint=fingerprint, label=label, splits=splits,
                               file_hashes=hashes, rederive=True)
    if problems:
        more = f" (and {len(problems) - 1} more; run odyssey prep --validate {domain_dir})" if len(problems) > 1 else ""
        raise ValidationError(problems[0] + more)
