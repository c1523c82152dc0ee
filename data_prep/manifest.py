"""The domain manifest: what a prepared domain folder holds and which tokenizer made it.

Layout of a prepared domain:
    <dir>/manifest.json
    <dir>/{train,val,test}/index.json + shard.*.mds     (MDS, one `tokens` column of int32[seq_len])
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from data_prep.errors import OdysseyError
from data_prep.tokenize import document_bos

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


class ManifestError(OdysseyError, ValueError):
    """A prepared domain that is missing, incomplete or made for another tokenizer."""


def tokenizer_fingerprint(tokenizer) -> dict[str, Any]:
    """Name and a hash of the vocabulary (token → id), so shards from another tokenizer are caught before training."""
    vocab = tokenizer.get_vocab()
    digest = hashlib.sha256(json.dumps(sorted(vocab.items(), key=lambda kv: kv[1]), ensure_ascii=False).encode()).hexdigest()
    return {
        "name": getattr(tokenizer, "name_or_path", "") or "",
        "vocab_size": len(vocab),
        "vocab_sha256": digest,
        "eos_token": tokenizer.eos_token,
        "eos_id": tokenizer.eos_token_id,  # after every document
        "bos_id": document_bos(tokenizer),  # before every document, where the tokenizer adds one (else null)
    }


def write_manifest(domain_dir: Path, manifest: dict) -> None:
    tmp = domain_dir / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    tmp.replace(domain_dir / MANIFEST)


def read_manifest(domain_dir: str | Path) -> dict:
    domain_dir = Path(domain_dir)
    path = domain_dir / MANIFEST
    if not domain_dir.is_dir():
        raise ManifestError(f"prepared domain not found: {domain_dir}")
    if not path.is_file():
        raise ManifestError(f"{domain_dir}: no {MANIFEST} (not a prepared domain, or prep did not finish)")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ManifestError(f"{path}: not valid JSON ({err.msg})") from None
    for key in ("domain", "seq_len", "tokenizer", "splits"):
        if key not in manifest:
            raise ManifestError(f"{path}: missing '{key}'")
    return manifest


def check_tokenizer(manifest: dict, fingerprint: dict, where: str) -> None:
    want, got = manifest["tokenizer"], fingerprint
    if want.get("vocab_sha256") != got["vocab_sha256"]:
        raise ManifestError(
            f"{where}: shards were made with tokenizer '{want.get('name')}' (vocab {want.get('vocab_size')}, "
            f"sha256 {str(want.get('vocab_sha256'))[:12]}), not the model's '{got['name']}' "
            f"(vocab {got['vocab_size']}, sha256 {got['vocab_sha256'][:12]}); re-run odyssey prep with the model's tokenizer"
        )
