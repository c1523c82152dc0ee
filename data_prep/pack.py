"""Tokenize documents, route each to train/val/test by a hash of its text, and pack each split into fixed-length rows.

Packing concatenates documents with EOS after each one and cuts rows of exactly `seq_len` tokens; the tail that does not
fill a row is dropped and counted. Splitting by content hash keeps duplicates of a document in one split, so the test split
never holds text that was also trained on.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import numpy as np

from data_prep.sources import Doc

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class SplitFractions:
    val: float = 0.05
    test: float = 0.05

    def __post_init__(self) -> None:
        if not (0 <= self.val < 1 and 0 <= self.test < 1 and self.val + self.test < 1):
            raise ValueError(f"split fractions val={self.val}, test={self.test} must be in [0, 1) and sum below 1")


def split_of(text: str, fractions: SplitFractions) -> str:
    """Deterministic split for a document: the first 8 bytes of sha256(text) as a number in [0, 1)."""
    u = int.from_bytes(hashlib.sha256(text.encode("utf-8", errors="replace")).digest()[:8], "big") / 2**64
    if u < fractions.test:
        return "test"
    if u < fractions.test + fractions.val:
        return "val"
    return "train"


@dataclass
class SplitStats:
    docs: int = 0
    samples: int = 0
    tokens: int = 0  # tokens written into rows (samples * seq_len)
    dropped_tokens: int = 0  # tail that did not fill a last row


@dataclass
class Packer:
    """Accumulates token ids for one split and emits full rows of `seq_len`."""

    seq_len: int
    eos_id: int
    stats: SplitStats = field(default_factory=SplitStats)
    _buf: list[int] = field(default_factory=list)

    def add(self, ids: list[int]) -> Iterator[np.ndarray]:
        self.stats.docs += 1
        self._buf.extend(ids)
        self._buf.append(self.eos_id)
        n_full = len(self._buf) // self.seq_len
        if n_full:
            rows = np.asarray(self._buf[: n_full * self.seq_len], dtype=np.int32).reshape(n_full, self.seq_len)
            del self._buf[: n_full * self.seq_len]
            self.stats.samples += n_full
            self.stats.tokens += n_full * self.seq_len
            yield from rows

    def finish(self) -> None:
        self.stats.dropped_tokens += len(self._buf)
        self._buf.clear()


def tokenize_batches(docs: Iterable[Doc], tokenizer, batch_size: int = 256) -> Iterator[tuple[Doc, list[int]]]:
    """Batch documents through the fast tokenizer (no special tokens: EOS is added by the packer)."""
    batch: list[Doc] = []

    def flush():
        enc = tokenizer(
            [d.text for d in batch], add_special_tokens=False, return_attention_mask=False, verbose=False
        )["input_ids"]
        yield from zip(batch, enc)
        batch.clear()

    for doc in docs:
        if doc.text.strip():
            batch.append(doc)
        if len(batch) >= batch_size:
            yield from flush()
    if batch:
        yield from flush()
