"""Training and eval data from prepared domains.

Training: the train splits of all streams, mixed by proportion, read by `streaming.StreamingDataset` (which shards samples
across ranks and resumes from the loader's `state_dict`). Eval: each domain's test split read whole by every rank through
`LocalDataset`, strided by rank, so no sample is repeated or dropped (StreamingDataset pads ranks with repeats).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from data_prep.manifest import ManifestError, check_tokenizer, read_manifest
from data_prep.shards import TOKENS, open_split, split_seq_len
from trainer.config import Config


@dataclass
class Domain:
    name: str
    path: Path
    manifest: dict


def check_domains(cfg: Config, tokenizer_fp: dict) -> tuple[dict[str, Domain], int]:
    """Read every manifest the run needs, check tokenizer and seq_len agree; returns (domains by name, seq_len)."""
    domains: dict[str, Domain] = {}
    for d in cfg.eval_domains():
        manifest = read_manifest(d.path)
        check_tokenizer(manifest, tokenizer_fp, f"domain '{d.name}' ({d.path})")
        domains[d.name] = Domain(d.name, Path(d.path), manifest)
    wanted = {"train": [s.name for s in cfg.data.streams], cfg.eval.split: list(domains)}
    seq_lens = {dom.manifest["seq_len"] for dom in domains.values()}
    if len(seq_lens) > 1:
        raise ManifestError(f"domains were packed with different seq_len: "
                            f"{ {n: d.manifest['seq_len'] for n, d in domains.items()} }")
    seq_len = seq_lens.pop()
    if cfg.data.seq_len is not None and cfg.data.seq_len != seq_len:
        raise ManifestError(f"data.seq_len={cfg.data.seq_len} but the domains were packed with seq_len={seq_len}")
    for split, names in wanted.items():
        for name in names:
            split_dir = domains[name].path / split
            if not (split_dir / "index.json").is_file():
                raise ManifestError(f"domain '{name}': missing {split_dir}/index.json")
            if domains[name].manifest["splits"][split]["samples"] == 0:
                raise ManifestError(f"domain '{name}': the {split} split is empty")
            if split_seq_len(split_dir) != seq_len:
                raise ManifestError(f"domain '{name}': {split_dir} holds rows of {split_seq_len(split_dir)} tokens, "
                                    f"the manifest says {seq_len}")
    return domains, seq_len


def _collate(batch: list[dict]) -> torch.Tensor:
    return torch.from_numpy(np.stack([b[TOKENS] for b in batch]).astype(np.int64))


def build_train_loader(cfg: Config, domains: dict[str, Domain]):
    from streaming import Stream, StreamingDataLoader, StreamingDataset

    os.environ.setdefault("LOCAL_WORLD_SIZE", os.environ.get("LOCAL_SIZE", os.environ.get("WORLD_SIZE", "1")))
    mixed = len(cfg.data.streams) > 1
    streams = [
        Stream(local=str(domains[s.name].path / "train"), proportion=s.proportion if mixed else None)
        for s in cfg.data.streams
    ]
    dataset = StreamingDataset(
        streams=streams, batch_size=cfg.data.micro_batch, shuffle=cfg.data.shuffle, shuffle_seed=cfg.run.seed,
        replication=None,
    )
    return StreamingDataLoader(dataset, batch_size=cfg.data.micro_batch, num_workers=cfg.data.num_workers,
                               collate_fn=_collate, drop_last=True, persistent_workers=False)


class Batches:
    """Endless iterator over the loader: a new pass (epoch) starts when one ends. Tracks epochs for logging."""

    def __init__(self, loader):
        self.loader = loader
        self.epoch = 0
        self._it = None

    def __next__(self) -> torch.Tensor:
        if self._it is None:
            self._it = iter(self.loader)
        try:
            return next(self._it)
        except StopIteration:
            self.epoch += 1
            self._it = iter(self.loader)
            return next(self._it)


def open_eval_sets(domains: dict[str, Domain], split: str) -> dict[str, object]:
    """One random-access dataset per eval domain, opened once per run (streaming allocates shared memory for each)."""
    return {name: open_split(dom.path / split) for name, dom in domains.items()}


def eval_batches(ds, rank: int, world: int, micro_batch: int, max_samples: int | None):
    """This rank's eval batches of (tokens, weight). Every rank yields the same number of batches; padding batches
    repeat sample 0 with weight 0, so ZeRO-3's collective forwards line up and padding never counts."""
    n = ds.num_samples if max_samples is None else min(ds.num_samples, max_samples)
    mine = list(range(rank, n, world))
    per_rank = -(-n // world)
    n_batches = -(-per_rank // micro_batch)
    for b in range(n_batches):
        ids = mine[b * micro_batch:(b + 1) * micro_batch]
        weight = [1.0] * len(ids) + [0.0] * (micro_batch - len(ids))
        ids = ids + [0] * (micro_batch - len(ids))
        tokens = torch.from_numpy(np.stack([ds[i][TOKENS] for i in ids]).astype(np.int64))
        yield tokens, torch.tensor(weight)

