"""Token transitions: which scored positions were easy or hard for the base model, and whether they still are.
Rho-1 (Lin et al. 2024, arXiv 2404.07965) splits training tokens by their loss across a model's training into
L→L, H→L, L→H and H→H; here the split is against the base model (step 0) and one loss threshold τ on its
losses.

Definitions (docs/ANALYSIS.md), over the scored positions p (target id ≥ 0, as in tokenstats.summarize):
- τ = the q-quantile of the base losses of the scored positions (kind "quantile", default q = 0.5: their median),
  or a fixed number of nats (kind "absolute").
- a position is low under a model when its loss ≤ τ, high when > τ; its class is (base, now):
  ll = low→low, lh = low→high, hl = high→low, hh = high→high.
- share_c = |{p in c}| / |{p}|; the four shares sum to 1.
- Δ_p = loss_now(p) − loss_base(p); dloss_c = Σ_{p in c} Δ_p; dloss_share_c = dloss_c / Σ_p Δ_p (0 when that
  total is 0); the four sum to 1 otherwise. By construction Δ_p > 0 on lh and Δ_p < 0 on hl.
- per category (of the target id): the same shares over that category's positions and its total Δ.
- low_to_high: per target id v, Σ Δ_p over its lh positions; the ids with the largest sum are the tokens the model
  knew and lost, each with its lh occurrences of largest Δ in context.

NumPy only: analysis/tokenstats.py (`TokenStats`) calls this, so the vocabulary comes in as arguments.
"""
from __future__ import annotations

import re
from typing import Sequence

import numpy as np

CLASSES = ("ll", "lh", "hl", "hh")  # index = 2 * (base high) + (now high)


def threshold_of(base_scored: np.ndarray, kind: str = "quantile", value: float = 0.5) -> float:
    """τ in nats: a quantile of the base losses (so the split adapts to the model and domain), or a fixed value."""
    if kind == "quantile":
        return float(np.quantile(np.asarray(base_scored, dtype=np.float64), value))
    if kind == "absolute":
        return float(value)
    raise ValueError(f"threshold kind must be 'quantile' or 'absolute', not {kind!r}")


def class_of(base: np.ndarray, current: np.ndarray, threshold: float) -> np.ndarray:
    """Each position's class index into CLASSES."""
    return 2 * (base > threshold).astype(np.int64) + (current > threshold)


def _shares(cls: np.ndarray, delta: np.ndarray) -> dict:
    count = np.bincount(cls, minlength=len(CLASSES))
    dloss = np.bincount(cls, weights=delta, minlength=len(CLASSES))
    n, total = int(count.sum()), float(dloss.sum())
    return {"tokens": n,
            "share": {c: float(count[i] / n) if n else 0.0 for i, c in enumerate(CLASSES)},
            "dloss_share": {c: float(dloss[i] / total) if total else 0.0 for i, c in enumerate(CLASSES)},
            "dloss": {c: float(dloss[i]) for i, c in enumerate(CLASSES)}}


def transitions(targets: np.ndarray, base: np.ndarray, current: np.ndarray, category_of_id: np.ndarray,
                threshold: float, categories: Sequence[str]) -> dict:
    """Share of positions and of the total Δ in each class, overall and per category of the target id
    (`categories`: the name of each category index, tokenstats.CATEGORIES). The positions without a target (-100)
    are left out, as summarize leaves them out."""
    scored = targets >= 0
    b = base[scored].astype(np.float64)
    c = current[scored].astype(np.float64)
    cls, delta = class_of(b, c, threshold), c - b
    cats = category_of_id[targets[scored]]
    out = {"threshold": float(threshold), **_shares(cls, delta), "category": {}}
    for i, name in enumerate(categories):
        mine = cats == i
        per = _shares(cls[mine], delta[mine])
        out["category"][name] = {k: per[k] for k in ("tokens", "share", "dloss_share")}
    return out


def low_to_high(targets: np.ndarray, base: np.ndarray, current: np.ndarray, threshold: float, vocab,
                top: int = 20, contexts: int = 3, width: int = 8) -> list[dict]:
    """The target ids whose low→high positions carry the largest summed Δ: what the base model predicted well and
    the model now does not. Each with up to `contexts` of its lh occurrences of largest Δ, the token in brackets
    after the up-to-`width` scored tokens before it in the same sample. `vocab`: a tokenstats.Vocab."""
    base, current = base.astype(np.float64), current.astype(np.float64)  # compared as transitions compares them
    lh = (targets >= 0) & (class_of(base, current, threshold) == CLASSES.index("lh"))
    rows, cols = np.nonzero(lh)  # row-major, the order of boolean indexing below
    ids = targets[rows, cols]
    b, c = base[lh], current[lh]
    delta = c - b
    uniq, which = np.unique(ids, return_inverse=True)
    delta_sum = np.bincount(which, weights=delta, minlength=len(uniq))
    out = []
    for k in np.argsort(-delta_sum, kind="stable")[:top]:
        mine = np.flatnonzero(which == k)
        worst = mine[np.argsort(-delta[mine], kind="stable")[:contexts]]
        v = int(uniq[k])
        out.append({"id": v, "token": vocab.shown(v), "category": vocab.category_name(v),
                    "count": int(mine.size), "delta_sum": float(delta_sum[k]),
                    "mean_base_loss": float(b[mine].mean()), "mean_loss": float(c[mine].mean()),
                    "contexts": [context(targets[rows[p]], int(cols[p]), vocab, width) for p in worst]})
    return out


def context(row: np.ndarray, j: int, vocab, width: int) -> str:
    """The up-to-`width` tokens before position j of one sample, then the token at j in brackets, escaped (escape
    maps each character alone, so escaping each piece is escaping the text). Unscored positions (-100: a prompt,
    padding) have no id here and are skipped."""
    before = [int(t) for t in row[max(0, j - width):j] if t >= 0]
    return "".join(vocab.shown(t) for t in before) + "[" + vocab.shown(int(row[j])) + "]"


def low_to_high_markdown(rows: list[dict], domain: str, step: int, threshold: float) -> str:
    """The low_to_high rows as a markdown table (tokens in code spans, so spaces and symbols read as they are)."""
    lines = [f"# {domain}, step {step}: low→high tokens (base loss ≤ {threshold:.4g} nats, now above it)", "",
             "| token | category | count | Δ sum | mean loss, base → now | contexts |",
             "|---|---|---:|---:|---|---|"]
    for r in rows:
        shown = "<br>".join(code(c) for c in r["contexts"])
        lines.append(f"| {code(r['token'])} | {r['category']} | {r['count']} | {r['delta_sum']:.4g} | "
                     f"{r['mean_base_loss']:.3f} → {r['mean_loss']:.3f} | {shown} |")
    if not rows:
        lines.append("| (none) | | | | | |")
    return "\n".join(lines) + "\n"


def code(text: str) -> str:
    """A markdown code span that shows `text` exactly, inside a table cell."""
    if not text:
        return "(empty)"
    fence = "`" * (max((len(run) for run in re.findall("`+", text)), default=0) + 1)
    pad = " " if text[0] == "`" or text[-1] == "`" or (text[0] == text[-1] == " " and text.strip()) else ""
    return fence + pad + text.replace("|", "\\|") + pad + fence
