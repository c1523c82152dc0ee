"""Training and eval data from prepared domains.

Training: the train splits of all streams, mixed by proportion, read by `streaming.StreamingDataset` (which shards samples
across ranks and resumes from the loader's `state_dict`). Eval: each domain's test split, read by global sample index and
strided over ranks here, so no sample is repeated or dropped (StreamingDataset's own iteration pads ranks with repeats).
Domains are local folders or remote URLs (s3://…); remote shards are cached under `data.cache_dir`.
"""
from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from data_prep import remote
from data_prep.console import log
from data_prep.errors import OdysseyError
from data_prep.manifest import MANIFEST, ManifestError, check_tokenizer, read_manifest
from data_prep.shards import IGNORE, INPUT_IDS, LABELS, SEGMENTS, TOKENS, open_split
from data_prep.validate import require_valid
from trainer.config import Config, ConfigError
from trainer.dist import Dist, rank_cores, stop_together


@dataclass
class Domain:
    name: str
    local: Path  # the prepared folder, or for a remote domain its local cache
    remote: str | None  # s3://… (any remote streaming supports), or None
    manifest: dict

    def split(self, split: str) -> dict:
        """Stream/StreamingDataset arguments for one split."""
        return {"local": str(self.local / split), "remote": remote.join(self.remote, split) if self.remote else None}


def open_domain(name: str, path: str, cache_dir: Path) -> Domain:
    """Read a prepared domain's manifest; a remote one's manifest is downloaded into `cache_dir/name`."""
    if remote.is_remote(path):
        local = cache_dir / name
        try:
            remote.download(remote.join(path, MANIFEST), local / MANIFEST)
        except Exception as err:  # streaming raises FileNotFoundError, botocore errors, …
            raise ManifestError(f"domain '{name}': cannot read {remote.join(path, MANIFEST)} "
                                f"({type(err).__name__}: {str(err).splitlines()[0][:160]})") from None
        return Domain(name, local, path, read_manifest(local))
    return Domain(name, Path(path), None, read_manifest(path))


def stream_kinds(cfg: Config) -> dict[str, str]:
    """{stream: 'task' (odyssey prep --task) or 'lm' (packed pretraining rows)}, from each manifest."""
    return {s.name: open_domain(s.name, s.path, _cache_dir(cfg)).manifest.get("kind", "lm") for s in cfg.data.streams}


def _cache_dir(cfg: Config) -> Path:
    """Where remote domains' manifests and shards are cached."""
    return Path(cfg.data.cache_dir) if cfg.data.cache_dir else cfg.run_dir.parent / ".shard_cache"


def check_domains(cfg: Config, tokenizer_fp: dict, dist: Dist | None = None, hashes: bool | None = None
                  ) -> tuple[dict[str, Domain], int]:
    """Open every domain the run needs and check it before step 1: tokenizer, seq_len, and (local domains) the
    shard validation, so a missing, truncated, corrupt or foreign shard stops the run with one line naming it.

    Shard files are checked once per node, by its local rank 0 (the files are the node's, or a shared filesystem's,
    where once per node is still cheap): hashing them on every rank read the node's data 8 times on 8 GPUs. Every
    rank then learns the first failure of any rank, so that all of them stop together with the same line rather
    than the others waiting in their next collective. `hashes`: xxh64 of every shard file (default
    data.verify_hashes); the launcher's preflight passes False and leaves it to the ranks, which hash on every launch
    path (srun, deepspeed, torchrun) on the nodes that read the files, still before any weight loads."""
    dist = dist or Dist()  # one process, no process group
    hashes = cfg.data.verify_hashes if hashes is None else hashes
    found, failure = None, None
    try:
        found = _open_and_check(cfg, tokenizer_fp, validate=dist.local_rank == 0, hashes=hashes)
    except (OdysseyError, OSError) as err:  # a known bad input: its line, saying where when there are ranks
        failure = err if dist.world == 1 else f"{err} (rank {dist.rank} on {socket.gethostname()})"
    except Exception as err:  # a bug: its traceback here, the other ranks stop with its summary
        failure = err
    stop_together(failure, dist)
    return found


def _open_and_check(cfg: Config, tokenizer_fp: dict, validate: bool, hashes: bool
                    ) -> tuple[dict[str, Domain], int]:
    """check_domains on this rank; `validate`: also this node's shard files (sizes, and xxh64 when `hashes`)."""
    cache_dir = _cache_dir(cfg)
    train_names = {s.name for s in cfg.data.streams}
    domains: dict[str, Domain] = {}
    t0, hashed = time.time(), []
    for d in cfg.eval_domains():
        dom = open_domain(d.name, d.path, cache_dir)
        check_tokenizer(dom.manifest, tokenizer_fp, f"domain '{d.name}' ({d.path})")
        needed = tuple(s for s in ("train", cfg.eval.split) if s == cfg.eval.split or d.name in train_names)
        for split in needed:
            if dom.manifest["splits"][split]["samples"] == 0:
                raise ManifestError(f"domain '{d.name}': the {split} split is empty")
        if dom.remote is None and validate:
            require_valid(dom.local, label=d.name, splits=needed, hashes=hashes)
            hashed += [d.name] if hashes else []
        domains[d.name] = dom
    if hashed:  # one line per node: the proof that the node's shards were hashed once
        log(f"shard checksums of {', '.join(hashed)} verified on {socket.gethostname()} in {time.time() - t0:.1f}s "
            f"(once per node, by its local rank 0)", every_rank=True)
    seq_lens = {n: dom.manifest["seq_len"] for n, dom in domains.items()}
    if len(set(seq_lens.values())) > 1:
        raise ManifestError(f"domains were packed with different seq_len: {seq_lens}")
    seq_len = next(iter(seq_lens.values()))
    if cfg.data.seq_len is not None and cfg.data.seq_len != seq_len:
        raise ManifestError(f"data.seq_len={cfg.data.seq_len} but the domains were packed with seq_len={seq_len}")
    return domains, seq_len


SAMPLE_ID = "_sample_id"


def lm_batch(tokens: np.ndarray) -> dict[str, torch.Tensor]:
    """Continued pretraining: every position is a target, so labels = input_ids. A fine-tuning mode builds its own
    batches with labels = IGNORE outside the target; the loop and evaluation take whatever labels come."""
    input_ids = torch.from_numpy(tokens.astype(np.int64))
    return {"input_ids": input_ids, "labels": input_ids}


def batch_of(rows: list[dict], length: int | None = None) -> dict[str, torch.Tensor]:
    """A batch from packed LM rows (every position a target) or task rows (input_ids + labels, right-padded to
    `length`, else to the longest row). Padding takes no loss, and under causal attention no real token attends to it,
    since it comes after every real token of its row. Rows that pack several examples add `segment_ids` (padding:
    -1), from which `model_inputs` keeps attention inside each example."""
    if TOKENS in rows[0]:
        return lm_batch(np.stack([r[TOKENS] for r in rows]))
    n = length or max(len(r[INPUT_IDS]) for r in rows)
    input_ids = np.zeros((len(rows), n), dtype=np.int64)
    labels = np.full((len(rows), n), IGNORE, dtype=np.int64)
    segments = np.full((len(rows), n), -1, dtype=np.int64)
    for i, r in enumerate(rows):
        k = len(r[INPUT_IDS])
        input_ids[i, :k], labels[i, :k] = r[INPUT_IDS], r[LABELS]
        segments[i, :k] = r[SEGMENTS] if SEGMENTS in r else 0
    batch = {"input_ids": torch.from_numpy(input_ids), "labels": torch.from_numpy(labels)}
    if segments.max() > 0:
        batch[SEGMENT_IDS] = torch.from_numpy(segments)
    return batch


SEGMENT_IDS = "segment_ids"


def model_inputs(batch: dict[str, torch.Tensor], attn_impl: str, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The model's keyword arguments from a batch on the device. A packed batch gets position ids that restart at
    each example and an attention mask that keeps every token inside its example: block-causal, as a boolean mask
    for sdpa, an additive one for eager attention; flash_attention_2 takes the position ids alone (transformers then
    runs each example as its own sequence; it does so for a batch of one row, so the rows are joined into one: each
    starts with its BOS or prompt, whose labels take no loss, so no loss crosses a join)."""
    segments = batch.pop(SEGMENT_IDS, None)
    if segments is None:
        return batch
    b, n = segments.shape
    index = torch.arange(n, device=segments.device).expand(b, n)
    starts = torch.ones_like(segments, dtype=torch.bool)
    starts[:, 1:] = segments[:, 1:] != segments[:, :-1]
    batch["position_ids"] = index - torch.where(starts, index, 0).cummax(dim=1).values
    if attn_impl == "flash_attention_2":  # transformers reads packing from position ids of a single row only
        return {k: v.reshape(1, -1) for k, v in batch.items()}
    if attn_impl not in ("sdpa", "eager"):
        raise ConfigError(f"packed task rows need sdpa, eager or flash_attention_2 attention, not {attn_impl}")
    causal = torch.ones(n, n, dtype=torch.bool, device=segments.device).tril()
    allowed = ((segments[:, :, None] == segments[:, None, :]) & causal)[:, None]
    batch["attention_mask"] = allowed if attn_impl != "eager" else \
        torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, torch.finfo(dtype).min)
    return batch


def excluded_targets(tokenizer, cfg: Config, device: torch.device) -> torch.Tensor | None:
    """loss.exclude_categories as a [vocab] bool table on the device: the target ids whose category (the analysis's
    own, analysis/tokenstats.py, with eval.function_words) takes no training loss. None when nothing is excluded."""
    if not cfg.loss.exclude_categories:
        return None
    from analysis.metrics import function_words
    from analysis.tokenstats import CATEGORIES, Vocab

    vocab = Vocab.from_tokenizer(tokenizer, function_words(cfg.eval.function_words))
    excluded = np.isin(vocab.category, [CATEGORIES.index(c) for c in cfg.loss.exclude_categories])
    return torch.from_numpy(excluded).to(device)


def drop_excluded(labels: torch.Tensor, excluded: torch.Tensor) -> torch.Tensor:
    """`labels` with IGNORE (-100) at every target position whose id `excluded` marks; on the device, no host sync."""
    return labels.masked_fill(excluded[labels.clamp(min=0)] & (labels >= 0), IGNORE)


BASE_LOSSES = "base_losses"


def _collate(batch: list[dict]) -> dict:
    """{input_ids, labels: [micro_batch, length] int64, sample_ids: the samples' global ids for the ledger, and with
    loss.select_top base_losses: [micro_batch, length - 1] float16, the base model's losses on these samples}."""
    out = batch_of(batch)
    out["sample_ids"] = np.array([b[SAMPLE_ID] for b in batch], dtype=np.int64)
    if BASE_LOSSES in batch[0]:
        out[BASE_LOSSES] = torch.from_numpy(np.stack([b[BASE_LOSSES] for b in batch]))
    return out


_opened_scores: dict[str, np.ndarray] = {}  # per process (a loader worker opens its own): score file → memmap


def _dataset_class():
    from streaming import StreamingDataset

    class LedgeredDataset(StreamingDataset):
        """StreamingDataset whose samples carry their global sample id (for the sample ledger) and, given the
        streams' score files (trainer/scoring.py, in stream order), the base model's losses on the sample."""
        scores: list[str] | None = None

        def get_item(self, sample_id: int, retry: int = 7):
            item = {**super().get_item(sample_id, retry), SAMPLE_ID: int(sample_id)}
            if self.scores:
                stream = int(np.searchsorted(self.sample_offset_per_stream, sample_id, side="right")) - 1
                path = self.scores[stream]
                if path not in _opened_scores:
                    _opened_scores[path] = np.load(path, mmap_mode="r")
                item[BASE_LOSSES] = np.array(_opened_scores[path][sample_id - self.sample_offset_per_stream[stream]])
            return item

    return LedgeredDataset


def loader_workers(configured: int | None, device: torch.device, local_world: int, cores: int | None = None) -> int:
    """Worker processes per rank: as configured, else on a GPU up to 4, leaving this rank's main process a core of
    the `cores` it may use by itself (rank_cores), and 0 on CPU, where every core already trains."""
    if configured is not None:
        return configured
    if device.type != "cuda":
        return 0
    cores = rank_cores(local_world) if cores is None else cores
    return max(1, min(4, cores - 1))


ALL_AHEAD = 2**62  # samples: more than any epoch


def build_train_loader(cfg: Config, domains: dict[str, Domain], device: torch.device,
                       scores: list[str] | None = None):
    """The mixed training stream. On a GPU, batches come from worker processes in pinned memory, so the copy to the
    device is asynchronous (`non_blocking=True` in the loop). `scores`: the streams' base-model loss files in stream
    order (loss.select_top; trainer/scoring.py: stream_scores), whose rows the batches then carry."""
    from streaming import Stream, StreamingDataLoader

    mixed = len(cfg.data.streams) > 1
    if mixed and cfg.data.mixing == "stratified":
        check_stratified(cfg, int(os.environ.get("WORLD_SIZE", "1")))
    streams = [
        Stream(**domains[s.name].split("train"), proportion=s.proportion if mixed else None)
        for s in cfg.data.streams
    ]
    # Shards that are all local need no download-ahead window: with one larger than any epoch (predownload; streaming
    # turns None into 8 micro-batches) its prepare and ready threads walk the epoch's sample ids once and exit,
    # instead of waking every 7 ms for the whole epoch to keep a window filled. In the training process itself (CPU: no loader workers) those wake-ups took ~9 % of
    # the CPU time and the GIL from the step (docs/BENCHMARKS.md). Remote streams keep streaming's window.
    all_local = all(domains[s.name].remote is None for s in cfg.data.streams)
    dataset = _dataset_class()(
        streams=streams, batch_size=cfg.data.micro_batch, shuffle=cfg.data.shuffle, shuffle_seed=cfg.run.seed,
        replication=None, batching_method=cfg.data.mixing if mixed else "random",
        **({"predownload": ALL_AHEAD} if all_local else {}),
    )
    dataset.scores = scores
    workers = loader_workers(cfg.data.num_workers, device, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return StreamingDataLoader(dataset, batch_size=cfg.data.micro_batch, num_workers=workers, collate_fn=_collate,
                               drop_last=True, persistent_workers=False, pin_memory=device.type == "cuda",
                               prefetch_factor=4 if workers else None)


def check_stratified(cfg: Config, world: int) -> None:
    """Stratified mixing splits each global batch (micro-batch x ranks) between the streams: every stream needs at
    least one of its samples, or streaming fails mid-run when it lays out the epoch."""
    total = sum(s.proportion for s in cfg.data.streams)
    global_batch = cfg.data.micro_batch * world
    for s in cfg.data.streams:
        if int(s.proportion / total * global_batch) < 1:
            raise ConfigError(f"data.mixing stratified: stream '{s.name}' ({s.proportion / total:.1%}) gets no sample "
                              f"of the global batch of {global_batch} (data.micro_batch {cfg.data.micro_batch} x "
                              f"{world} rank(s)); raise its proportion or the batch, or mix at random")


class Batches:
    """Endless iterator over the loader: a new pass (epoch) starts when one ends. Tracks epochs for logging."""

    def __init__(self, loader):
        self.loader = loader
        self.epoch = 0
        self._it = None

    def __next__(self) -> dict:
        if self._it is None:
            self._it = iter(self.loader)
        try:
            return next(self._it)
        except StopIteration:
            self.epoch += 1
            self._it = iter(self.loader)
            return next(self._it)


@dataclass
class EvalSet:
    """One domain's eval split: rows by sample index, and the length every eval batch is padded to (the domain's
    seq_len), so per-token arrays keep one shape across batches, evals and the baseline cache."""
    rows: object  # a streaming dataset
    length: int
    task: dict | None = None  # a task domain's `task` section of its manifest (template, kind, label words)

    @property
    def num_samples(self) -> int:
        return self.rows.num_samples

    def __getitem__(self, i: int) -> dict:
        return self.rows[i]


def open_eval_sets(domains: dict[str, Domain], split: str) -> dict[str, EvalSet]:
    """One random-access dataset per eval domain, opened once per run (streaming allocates shared memory for each)."""
    return {name: EvalSet(open_split(**dom.split(split)), dom.manifest["seq_len"], dom.manifest.get("task"))
            for name, dom in domains.items()}


def eval_batches(ds, dist: Dist, micro_batch: int, max_samples: int | None):
    """This rank's eval batches of (batch, weight, sample index). Every rank yields the same number of batches;
    padding rows repeat sample 0 with weight 0 (index -1), so ZeRO-3's collective forwards line up and padding never
    counts."""
    n = ds.num_samples if max_samples is None else min(ds.num_samples, max_samples)
    mine = list(range(dist.rank, n, dist.world))
    per_rank = -(-n // dist.world)
    n_batches = -(-per_rank // micro_batch)
    for b in range(n_batches):
        ids = mine[b * micro_batch:(b + 1) * micro_batch]
        pad = micro_batch - len(ids)
        batch = batch_of([ds[i] for i in ids + [0] * pad], ds.length)
        yield batch, torch.tensor([1.0] * len(ids) + [0.0] * pad), torch.tensor(ids + [-1] * pad)
