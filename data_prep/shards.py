"""MDS shard IO for packed token rows, through mosaicml-streaming's own writer and reader."""
from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

import numpy as np

TOKENS = "tokens"  # a packed LM row: seq_len token ids, every position a target
INPUT_IDS, LABELS = "input_ids", "labels"  # a task row (data_prep/tasks.py): variable length, labels IGNORE off-target
SEGMENTS = "segments"  # a task row: which example each token belongs to (0, 1, … in a packed training row)
IGNORE = -100  # the label of a position that takes no loss (transformers' ignore_index)
HASHES = ["sha1", "xxh64"]  # recorded per shard file in index.json; `odyssey prep --validate` checks them


def columns(seq_len: int) -> dict[str, str]:
    return {TOKENS: f"ndarray:int32:{seq_len}"}


class SplitWriters:
    """One MDSWriter per split under `root/<split>/`, opened together and closed together."""

    def __init__(self, root: Path, splits: tuple[str, ...], seq_len: int, compression: str | None = "zstd",
                 size_limit: str = "64mb"):
        from streaming import MDSWriter  # here, not at the top: streaming's import takes seconds (it imports
        # transformers and sklearn), and the launcher's checks import this module without writing a shard

        self._stack = ExitStack()
        self.writers = {
            s: self._stack.enter_context(
                MDSWriter(out=str(root / s), columns=columns(seq_len), compression=compression, size_limit=size_limit,
                          hashes=HASHES)
            )
            for s in splits
        }

    def write(self, split: str, row: np.ndarray) -> None:
        self.writers[split].write({TOKENS: row})

    def __enter__(self) -> "SplitWriters":
        return self

    def __exit__(self, *exc) -> None:
        self._stack.__exit__(*exc)


def open_split(local: str | Path, remote: str | None = None):
    """Random access by global sample index to a split, local or remote, compressed or not (streaming downloads and
    decompresses shards on first access). Used for eval, where each rank strides over the whole split itself."""
    from streaming import StreamingDataset

    return StreamingDataset(local=str(local), remote=remote, shuffle=False, batch_size=1, replication=None)
