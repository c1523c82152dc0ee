"""Eval results → the metrics users chart (names fixed in docs/CONFIG.md and the design card), and the token
statistics files of one eval. Pure: returns metrics, tags and files; the caller logs them."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from data_prep.console import log
from analysis.baseline import BaselineCache
from analysis.plots import token_report
from analysis.tokenstats import FUNCTION_WORDS, Vocab, summarize, table_frame

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


class TokenStats:
    """Token statistics of one eval against step 0, per domain: at step 0 the per-token losses are cached; later the
    per-id, per-category and per-position comparison is written under <run_dir>/tokens/<domain>/step_<N>.*"""

    def __init__(self, run_dir: Path, cache: BaselineCache, vocab: Vocab, top_k: int):
        self.run_dir, self.cache, self.vocab, self.top_k = Path(run_dir), cache, vocab, top_k

    def __call__(self, results: dict, step: int) -> tuple[dict[str, float], dict[str, str], list[tuple[Path, str]]]:
        """(metrics, tags, [(file, artifact folder)]) for one eval; `results[name]` has .targets and .losses."""
        metrics: dict[str, float] = {}
        tags: dict[str, str] = {}
        files: list[tuple[Path, str]] = []
        for name, r in results.items():
            if step == 0:
                meta = self.cache.save(name, r.targets, r.losses)
                tags.update({f"baseline.{name}.eval_set_hash": meta["eval_set_hash"],
                             f"baseline.{name}.tokens": str(meta["tokens"]), "baseline.model_hash": meta["model_hash"]})
                continue
            base = self.cache.load(name, r.targets)
            if base is None:
                log(f"no step-0 baseline cached for '{name}' matching this eval set; token stats skipped")
                continue
            summary = summarize(r.targets, base, r.losses, self.vocab, self.top_k)
            metrics[f"tokens/{name}/topk_share"] = summary["topk_share"]
            for cat, share in summary["category_share"].items():
                metrics[f"tokens/{name}/cat/{cat}_share"] = share
            files += [(f, f"tokens/{name}") for f in self._write(summary, name, step)]
        return metrics, tags, files

    def _write(self, summary: dict, name: str, step: int) -> list[Path]:
        folder = self.run_dir / "tokens" / name
        folder.mkdir(parents=True, exist_ok=True)
        table_frame(summary, self.vocab).to_parquet(folder / f"step_{step}.parquet", index=False)
        keep = ("total_delta", "tokens", "topk_share", "category_share", "category_count", "top_degrading",
                "top_improving", "position")
        (folder / f"step_{step}.json").write_text(json.dumps({k: summary[k] for k in keep}, indent=1))
        token_report(summary, name, step, folder / f"step_{step}.png")
        return [folder / f"step_{step}.{suffix}" for suffix in ("parquet", "json", "png")]
