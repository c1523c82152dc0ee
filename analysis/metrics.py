"""Eval results → the metrics users chart (names fixed in docs/CONFIG.md and the design card). Pure: returns
metrics; the caller logs them (the token statistics of an eval: analysis/tokenstats.py, TokenStats)."""
from __future__ import annotations

import json
import math

import numpy as np

from analysis.baseline import BaselineCache
from analysis.tokenstats import FUNCTION_WORDS

MAX_LOSS_FOR_PPL = 80.0  # exp(80) ≈ 5.5e34: a diverged model gets a huge but finite perplexity, not inf


def perplexity(loss: float) -> float:
    return math.exp(min(loss, MAX_LOSS_FOR_PPL))


def function_words(words: list[str] | None) -> frozenset[str]:
    """The "function_words" token category: the configured list (case-insensitive), else an English one."""
    return frozenset(w.lower() for w in words) if words else FUNCTION_WORDS


def eval_metrics(results: dict, baseline: dict) -> dict[str, float]:
    """Per domain: loss, ppl, and both against step 0. `results[name]` has .loss and .ppl; `baseline[name]` is
    {"loss", "ppl"} at step 0."""
    out = {}
    for name, r in results.items():
        out[f"eval/{name}/loss"] = r.loss
        out[f"eval/{name}/ppl"] = r.ppl
        out[f"eval/{name}/ppl_ratio"] = r.ppl / baseline[name]["ppl"]
        out[f"eval/{name}/delta_loss"] = r.loss - baseline[name]["loss"]
    return out


def baseline_of(results: dict) -> dict[str, dict[str, float]]:
    return {name: {"loss": r.loss, "ppl": r.ppl} for name, r in results.items()}


def baseline_from_cache(cache: BaselineCache, domains) -> dict | None:
    """Step-0 loss and ppl per domain from the cached per-token losses (the token-weighted mean over the scored
    positions, as evaluation computes it; unscored ones hold 0), or None when any domain has no cache."""
    out = {}
    for name in domains:
        path, meta = cache.dir / f"{name}.npy", cache.dir / f"{name}.json"
        if not (path.is_file() and meta.is_file()):
            return None
        loss = float(np.load(path).astype(np.float64).sum() / max(1, json.loads(meta.read_text())["tokens"]))
        out[name] = {"loss": loss, "ppl": perplexity(loss)}
    return out
