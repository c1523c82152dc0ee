"""Check a prepared domain against its own index and manifest.

cheap (every training start): manifest, each split's index.json, every shard file present with the recorded size,
    seq_len, sample counts, and (given a tokenizer) the vocabulary hash.
deep (`odyssey prep --validate`): also every shard file's recorded hashes, and every token id within the vocabulary.

Problems are one line each and name the file, e.g. `prose/test/shard.00000.mds.zstd: 1200 bytes, index says 3522`.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

from data_prep.manifest import ManifestError, check_tokenizer, read_manifest
from data_prep.pack import SPLITS
from data_prep.shards import INPUT_IDS, TOKENS


class ValidationError(ManifestError):
    """A prepared domain whose files disagree with its index or manifest."""


def _shard_files(shard: dict) -> list[dict]:
    """The files that carry a shard: the compressed one if any, and the raw one (always, if uncompressed)."""
    files = []
    if shard.get("zip_data"):
        files.append(shard["zip_data"])
    files.append(shard["raw_data"])
    return files


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
                    label: str | None = None, splits: tuple[str, ...] = SPLITS, file_hashes: bool | None = None
                    ) -> list[str]:
    """All problems found, one line each (empty: the domain is sound). `fingerprint`: the tokenizer's, to compare."""
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
            files = _shard_files(shard)
            shard_problems = []
            for i, info in enumerate(files):
                name = f"{label}/{split}/{info['basename']}"
                # the raw file of a compressed shard appears only once streaming has decompressed it
                shard_problems += _check_file(split_dir / info["basename"], info, name, file_hashes and (i == 0 or deep),
                                              all_algos=deep, required=i == 0)
            problems += shard_problems
            if deep and not shard_problems:
                problems += _token_range(split_dir, shard, vocab, f"{label}/{split}/{files[0]['basename']}")
    return problems


def require_valid(domain_dir: str | Path, fingerprint: dict | None = None, label: str | None = None,
                  splits: tuple[str, ...] = SPLITS, hashes: bool = True) -> None:
    """Start-up validation; raises ValidationError with the first problem (and how many more). `hashes` checks each
    shard file against its index hash with the fastest algorithm recorded (xxh64: IO-bound), never token ids."""
    problems = validate_domain(domain_dir, deep=False, fingerprint=fingerprint, label=label, splits=splits,
                               file_hashes=hashes)
    if problems:
        more = f" (and {len(problems) - 1} more; run odyssey prep --validate {domain_dir})" if len(problems) > 1 else ""
        raise ValidationError(problems[0] + more)
