"""The reference of Rho-1-style selection (`loss.select_top`, trainer/selection.py): the base model's loss on every
target of a domain's training split, computed once by `odyssey score CONFIG` and stored with the shards, so that a
run needs no second model in memory to know how far each token's loss is above the base model's.

    <domain>/train/base_losses/<model key>.npy   float16 [samples, seq_len - 1]; row i is the split's sample i,
                                                 column p the loss of predicting its token p + 1
    <domain>/train/base_losses/<model key>.json  what it was computed from: the model, the split's index.json hash

The model key is analysis/baseline.py's model_hash (config.json and the weight files' names and sizes), so scores of
one model never serve another; a re-prepared split (another index.json) makes them stale. Every rank scores its
share of the samples into one temporary memmap in the domain folder (shared by the ranks: one node, or a shared
filesystem), and rank 0 renames it once all have finished: the file is whole or absent."""
from __future__ import annotations

import hashlib
import json
import socket
from pathlib import Path

import numpy as np
import torch

from analysis.baseline import model_hash
from data_prep.console import log
from data_prep.disk import write_atomic, writing
from data_prep.guard import exit_process, guarded
from data_prep.shards import open_split
from trainer.config import Config, ConfigError
from trainer.data import Domain, EvalSet, eval_batches
from trainer.dist import Dist, failure_of, stop_together
from trainer.evaluate import token_losses

SCORES = "base_losses"


def scores_file(domain: Domain, model_key: str) -> Path:
    return domain.local / "train" / SCORES / f"{model_key}.npy"


def split_hash(domain: Domain) -> str:
    """The training split's identity: its MDS index.json (every shard's name, size and hash)."""
    return hashlib.sha256((domain.local / "train" / "index.json").read_bytes()).hexdigest()[:16]


def unscorable(domain: Domain) -> str | None:
    """Why this stream can never be scored (None: it can): task data, or shards that are not local."""
    if domain.manifest.get("kind", "lm") != "lm":
        return (f"stream '{domain.name}' is task data; loss.select_top selects among the tokens of packed pretraining "
                f"rows (a task's loss is its targets only)")
    if domain.remote is not None:
        return (f"stream '{domain.name}' is remote ({domain.remote}); loss.select_top reads base-model losses stored "
                f"with local shards: prepare it locally and run odyssey score")
    return None


def scoring_problem(domain: Domain, model_path: str) -> str | None:
    """Why this stream cannot take `loss.select_top` (None: its scores are there and current)."""
    why = unscorable(domain)
    if why:
        return why
    path = scores_file(domain, model_hash(model_path))
    meta = path.with_suffix(".json")
    if not (path.is_file() and meta.is_file()):
        return (f"stream '{domain.name}' has no base-model losses for {model_path} ({path}); run `odyssey score "
                f"CONFIG` once before training with loss.select_top")
    if json.loads(meta.read_text()).get("split_hash") != split_hash(domain):
        return (f"stream '{domain.name}': its base-model losses ({path}) were computed on shards since re-prepared; "
                f"run `odyssey score CONFIG` again")
    return None


def check_scored(cfg: Config, domains: dict[str, Domain]) -> None:
    """With loss.select_top, every training stream has current base-model losses: one line naming the first that
    has not, at preflight, before any rank loads weights."""
    if cfg.loss.select_top is None:
        return
    for s in cfg.data.streams:
        problem = scoring_problem(domains[s.name], cfg.model.path)
        if problem:
            raise ConfigError(f"loss.select_top: {problem}")


def stream_scores(cfg: Config, domains: dict[str, Domain]) -> list[str] | None:
    """The score files of the training streams in config order (the loader's sample ids count through the streams
    in that order), or None without loss.select_top."""
    if cfg.loss.select_top is None:
        return None
    key = model_hash(cfg.model.path)
    return [str(scores_file(domains[s.name], key)) for s in cfg.data.streams]


def streams_to_score(cfg: Config, domains: dict[str, Domain]) -> list[Domain]:
    """The training streams without current scores for this model; one line for a stream that cannot be scored."""
    todo = []
    for s in cfg.data.streams:
        why = unscorable(domains[s.name])
        if why:
            raise ConfigError(f"odyssey score: {why}")
        if scoring_problem(domains[s.name], cfg.model.path) is not None:
            todo.append(domains[s.name])
    return todo


def score_split(domain: Domain, key: str, cfg: Config, dist: Dist, model) -> Path:
    path = scores_file(domain, key)
    tmp = path.with_name(f".{path.stem}.tmp.npy")
    rows = EvalSet(open_split(**domain.split("train")), domain.manifest["seq_len"])
    shape = (rows.num_samples, rows.length - 1)
    stop_together(failure_of(new_memmap, tmp, shape) if dist.main else None, dist)
    unseen = None if tmp.is_file() else (f"odyssey score: rank {dist.rank} on {socket.gethostname()} cannot see {tmp}, "
                                         f"which rank 0 made: score where the domain folder is shared by every rank "
                                         f"(one node, or a shared filesystem)")
    stop_together(unseen, dist)
    scores = np.load(tmp, mmap_mode="r+")
    model.eval()
    with torch.no_grad(), writing(tmp):
        for batch, weight, idx in eval_batches(rows, dist, cfg.eval.micro_batch or cfg.data.micro_batch, None):
            labels = batch["labels"].to(dist.device, non_blocking=True)
            losses = token_losses(model, batch["input_ids"].to(dist.device, non_blocking=True), labels)
            real = weight > 0
            scores[idx[real].numpy()] = losses[real.to(dist.device)].to(torch.float16).cpu().numpy()
        scores.flush()
    del scores
    failure = None
    if dist.main:
        meta = {"model": cfg.model.path, "model_hash": key, "split_hash": split_hash(domain), "shape": list(shape),
                "dtype": "float16"}
        failure = failure_of(finish, tmp, path, meta)
    stop_together(failure, dist)
    log(f"{domain.name}: base-model losses of {shape[0]} samples → {path}")
    return path


def new_memmap(tmp: Path, shape: tuple[int, int]) -> None:
    with writing(tmp):
        tmp.parent.mkdir(parents=True, exist_ok=True)
        np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=shape).flush()


def finish(tmp: Path, path: Path, meta: dict) -> None:
    """The .npy into place, then the .json that `scoring_problem` requires: a failure between leaves no pair."""
    path.with_suffix(".json").unlink(missing_ok=True)
    with writing(path):
        tmp.replace(path)
    write_atomic(path.with_suffix(".json"), json.dumps(meta, indent=2) + "\n")


def run_scoring(config: str, overrides: list[str], needed_only: bool = False) -> list[Path]:
    """One rank of `odyssey score`: the run config's training streams, scored with its base model (ZeRO-3 across
    ranks, no optimizer). `needed_only`: nothing unless the config sets loss.select_top."""
    from data_prep.manifest import tokenizer_fingerprint
    from trainer.config import load_config
    from trainer.data import check_domains
    from trainer.dist import init_distributed
    from trainer.engine import inference_model
    from trainer.model import load_tokenizer, resolve_dtype

    cfg = load_config(config, overrides)
    if needed_only and cfg.loss.select_top is None:
        return []
    cfg.loss.select_top = None  # what this pass makes is what select_top requires
    dist = init_distributed()
    domains, _ = check_domains(cfg, tokenizer_fingerprint(load_tokenizer(cfg.model)), dist)
    todo, key = streams_to_score(cfg, domains), model_hash(cfg.model.path)
    for s in cfg.data.streams:
        if domains[s.name] not in todo:
            log(f"{s.name}: base-model losses already current ({scores_file(domains[s.name], key)})")
    if not todo:
        return []
    cfg.model.dtype = resolve_dtype(cfg.model.dtype)
    model, keep = inference_model(cfg.model, dist.world > 1, dist.device)
    return [score_split(domain, key, cfg, dist, model) for domain in todo]


def main(argv: list[str] | None = None) -> int:
    """`python -m trainer.scoring`, what the deepspeed launcher starts on every rank for `odyssey score`."""
    from trainer.args import rank_args, score_arguments

    args = rank_args("odyssey score", score_arguments, argv)

    def run() -> int:
        run_scoring(args.config, args.overrides, args.needed_only)
        return 0

    return guarded(run)


if __name__ == "__main__":
    exit_process(main())
