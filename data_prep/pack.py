"""Route each document to train/val/test by a hash of its text, and pack each split into fixed-length rows.

Packing concatenates documents with EOS after each one and cuts rows of exactly `seq_len` tokens; the tail that does not
fill a row is dropped and counted. Splitting by content hash keeps duplicates of a document in one split, so the test split
never holds text that was also trained on.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np


SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class SplitFractions:
    val: float = 0.05
    test: float = 0.05

    def __post_init__(self) -> None:
        if not (0 <= self.val < 1 and 0 <= self.test < 1 and self.val + self.test < 1):
            raise ValueError(f"split fractions val={self.val}, test={self.test} must be in [0, 1) and sum below 1")


def text_digest(text: str) -> bytes:
    """8 bytes of sha256(text): the split key and the exact-duplicate key."""
    return hashlib.sha256(text.encode("utf-8", errors="replace")).digest()[:8]


def split_of(text: str, fractions: SplitFractions, digest: bytes | None = None) -> str:
    """Deterministic split for a document: its digest as a number in [0, 1)."""
    u = int.from_bytes(digest or text_digest(text), "big") / 2**64
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
    stats: SplitStats = field(default_factory=SplitStats)
    _tail: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int32))

    def add(self, ids: np.ndarray, n_docs: int) -> np.ndarray:
        """Append `n_docs` documents' ids (EOS already after each); returns the rows completed, [n, seq_len]."""
        self.stats.docs += n_docs
        buf = np.concatenate([self._tail, ids.astype(np.int32, copy=False)])
        n_full = len(buf) // self.seq_len
        rows = buf[: n_full * self.seq_len].reshape(n_full, self.seq_len)
        self._tail = buf[n_full * self.seq_len:].copy()
        self.stats.samples += n_full
        self.stats.tokens += n_full * self.seq_len
        return rows

    def finish(self) -> None:
        self.stats.dropped_tokens += len(self._tail)
        self._tail = self._tail[:0]
