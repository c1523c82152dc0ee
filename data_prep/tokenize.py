"""Parallel tokenization: batches of documents go to worker processes, each running the fast tokenizer's Rust
`encode_batch`; token ids come back as one int32 array per split (EOS already after each document), in order.

At most `2 × workers` batches are in flight, so memory stays flat however large the source is. Workers get the
tokenizer as its JSON (`tokenizers.Tokenizer.from_str`), which loads in milliseconds without importing transformers.
"""
from __future__ import annotations

import multiprocessing as mp
import os
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from data_prep import hub
from data_prep.config import ConfigError
from data_prep.errors import OdysseyError

_TOKENIZER = None
_EOS = -1
_BOS = -1  # -1: the tokenizer adds no BOS


class TokenizeError(OdysseyError, RuntimeError):
    """A tokenizer worker died (killed, out of memory, or its tokenizer would not load): one line, nothing written."""


@dataclass
class Batch:
    texts: list[str]
    splits: list[str]  # the split of each document

    @property
    def chars(self) -> int:
        return sum(len(t) for t in self.texts)


def _init_worker(tokenizer_json: str, eos_id: int, bos_id: int = -1) -> None:
    global _TOKENIZER, _EOS, _BOS
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one core per worker; the pool is the parallelism
    from tokenizers import Tokenizer

    _TOKENIZER = Tokenizer.from_str(tokenizer_json)
    _EOS, _BOS = eos_id, bos_id


def encode(batch: Batch) -> dict[str, tuple[np.ndarray, int]]:
    """{split: (ids of each document, BOS first where the tokenizer adds one, EOS last; number of documents)}."""
    encodings = _TOKENIZER.encode_batch(batch.texts, add_special_tokens=False)
    by_split: dict[str, list[list[int]]] = {}
    for split, enc in zip(batch.splits, encodings):
        ids = enc.ids
        if _BOS >= 0:
            ids.insert(0, _BOS)
        ids.append(_EOS)
        by_split.setdefault(split, []).append(ids)
    out = {}
    for split, docs in by_split.items():
        out[split] = (np.concatenate([np.asarray(ids, dtype=np.int32) for ids in docs]), len(docs))
    return out


def batches(items: Iterable[tuple[str, str]], max_docs: int = 512, max_chars: int = 4_000_000) -> Iterator[Batch]:
    """Group (text, split) pairs into batches bounded by document count and characters."""
    texts, splits, chars = [], [], 0
    for text, split in items:
        texts.append(text)
        splits.append(split)
        chars += len(text)
        if len(texts) >= max_docs or chars >= max_chars:
            yield Batch(texts, splits)
            texts, splits, chars = [], [], 0
    if texts:
        yield Batch(texts, splits)


def encode_all(work: Iterable[Batch], tokenizer_json: str, eos_id: int, workers: int, bos_id: int | None = None
               ) -> Iterator[dict[str, tuple[np.ndarray, int]]]:
    """Encoded batches in input order. workers=0 encodes in this process (no pool)."""
    bos = -1 if bos_id is None else bos_id
    if workers <= 0:
        _init_worker(tokenizer_json, eos_id, bos)
        for b in work:
            yield encode(b)
        return
    ctx = mp.get_context("spawn")  # no fork: the parent may hold threads (tokenizers' Rust pool, tqdm, MLflow)
    # ProcessPoolExecutor, not multiprocessing.Pool: a Pool replaces a dead worker and waits forever for its batch;
    # the executor fails every pending batch with BrokenProcessPool.
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                             initargs=(tokenizer_json, eos_id, bos)) as pool:
        pending: deque = deque()
        try:
            for b in work:
                pending.append(pool.submit(encode, b))
                if len(pending) >= 2 * workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        except BrokenProcessPool:
            raise TokenizeError("a tokenizer worker process died (killed, out of memory, or the tokenizer failed to "
                                "load in it); nothing was written") from None


def check_model_path(path: str, what: str, need: str = "model") -> str:
    """`path` when it can name a model: an existing local folder, or a hub name `org/model` that is in the local
    cache or on a reachable hub (data_prep/hub.py); else one line naming the setting `what` (e.g. model.path).
    `need`: what is loaded from it (config, tokenizer, model: the weights)."""
    if not Path(path).exists() and not hub.is_hub_name(path):
        raise ConfigError(f"{what} not found: {path} (a local model folder, or a hub name like org/model)")
    hub.require(path, what, need)
    return path


def load_tokenizer(path: str, what: str = "tokenizer", trust_remote_code: bool = False):
    """The fast tokenizer at `path` (a local folder, or a hub name `org/model` that is cached or fetchable), with the
    EOS token that packing puts between documents. `what` names the setting in the error (e.g. model.path)."""
    from transformers import AutoTokenizer

    path = check_model_path(str(path), what, "tokenizer")
    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:  # offline hub name, missing files, gated repo, not a tokenizer
        raise ConfigError(f"{what} {path}: cannot load a tokenizer ({str(err).splitlines()[0][:200]})") from None
    except (TypeError, AttributeError):  # a model folder whose config names a tokenizer class but holds no files
        raise ConfigError(f"{what} {path}: cannot load a tokenizer (no tokenizer files there)") from None
    if not tok.is_fast:
        raise ConfigError(f"{what} {path}: not a fast tokenizer")
    if tok.eos_token_id is None:
        raise ConfigError(f"{what} {path}: the tokenizer has no EOS token; packing needs one between documents")
    return tok


def document_bos(tokenizer) -> int | None:
    """The BOS id where the tokenizer itself starts every text with one (Llama, Mistral: `add_bos_token`), else None
    (GPT-2, OLMo). Prep puts it at each document start, so the shards match the way the model was pretrained."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return None
    with_specials = tokenizer("x", add_special_tokens=True)["input_ids"]
    plain = tokenizer("x", add_special_tokens=False)["input_ids"]
    return bos if with_specials[:1] == [bos] and plain[:1] != [bos] else None
