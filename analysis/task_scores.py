"""Task scores and the generalization matrix, with no model in sight: Rouge-L of a generation stripped and cut at its
first blank line, accuracy, which kind of cell (in-domain, out-of-domain, cross-task) a model × test set is, and
what the matrix says about the reference study's two findings (Yang et al., NAACL 2024): generation tasks generalize
worse than classification, and fine-tuning with in-context demonstrations (FTICL) helps generation generalize."""
from __future__ import annotations

from functools import lru_cache

import numpy as np

IN, OUT, CROSS, BASE = "in-domain", "out-of-domain", "cross-task", "base"
METRIC = {"generation": "rouge_l", "classification": "accuracy"}


BLANK_LINE = "\n\n"


def cut_generation(text: str) -> str:
    """The answer part of a greedy continuation: stripped, then cut at its first blank line (the reference study's
    order: a continuation that starts with a blank line keeps the answer after it)."""
    return text.strip().split(BLANK_LINE, 1)[0].strip()


@lru_cache(maxsize=1)
def _scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"])


def rouge_l(prediction: str, reference: str) -> float:
    """Rouge-L F-measure of `rouge-score` (its tokenizer: lower case, alphanumeric runs)."""
    return _scorer().score(reference, prediction)["rougeL"].fmeasure


def cell_kind(model_task: str | None, test_task: str, ood: bool) -> str:
    """A base model's cells are `base`; a model fine-tuned on task T scores T's own test set in-domain, T's
    out-of-domain set out-of-domain, and every other task's sets cross-task."""
    if model_task is None:
        return BASE
    if model_task != test_task:
        return CROSS
    return OUT if ood else IN


def generalization(cells: list[dict]) -> dict:
    """From matrix cells ({model, model_task, fticl, test, test_task, test_kind, ood, shots, score}): per fine-tuned
    model and shot count, the mean change against the base model (the model with no task) on the same test set and
    shots, by cell kind; then the two findings, each a sentence with the numbers and whether it holds (None when the
    matrix lacks the cells to say)."""
    base = {(c["test"], c["shots"]): c["score"] for c in cells if c["model_task"] is None}
    gains: dict[tuple, dict[str, list[float]]] = {}
    for c in cells:
        if c["model_task"] is None or (c["test"], c["shots"]) not in base:
            continue
        kind = cell_kind(c["model_task"], c["test_task"], c["ood"])
        key = (c["model"], c["model_task"], c["model_kind"], bool(c["fticl"]), c["shots"])
        gains.setdefault(key, {}).setdefault(kind, []).append(c["score"] - base[(c["test"], c["shots"])])
    models = [{"model": m, "task": t, "task_kind": k, "fticl": f, "shots": s,
               **{kind: float(np.mean(v)) for kind, v in by_kind.items()}}
              for (m, t, k, f, s), by_kind in sorted(gains.items(), key=lambda kv: (kv[0][0], kv[0][4]))]
    return {"models": models, "findings": [_generation_vs_classification(models), _fticl_helps_generation(models)]}


def _mean(rows: list[dict], kinds: tuple[str, ...]) -> float | None:
    values = [r[k] for r in rows for k in kinds if k in r]
    return float(np.mean(values)) if values else None


def _generation_vs_classification(models: list[dict]) -> dict:
    """Generalization = mean gain over the base on out-of-domain and cross-task cells, for plain fine-tuning."""
    plain = [m for m in models if not m["fticl"]]
    gen = _mean([m for m in plain if m["task_kind"] == "generation"], (OUT, CROSS))
    cls = _mean([m for m in plain if m["task_kind"] == "classification"], (OUT, CROSS))
    holds = None if gen is None or cls is None else gen < cls
    return {"finding": "generation tasks generalize worse than classification", "holds": holds,
            "generation_gain": gen, "classification_gain": cls,
            "text": f"mean gain over the base off the training task: generation {_fmt(gen)}, classification "
                    f"{_fmt(cls)}" + ("" if holds is None else f" ({'seen' if holds else 'not seen'} here)")}


def _fticl_helps_generation(models: list[dict]) -> dict:
    gen = [m for m in models if m["task_kind"] == "generation"]
    plain = _mean([m for m in gen if not m["fticl"]], (OUT, CROSS))
    icl = _mean([m for m in gen if m["fticl"]], (OUT, CROSS))
    holds = None if plain is None or icl is None else icl > plain
    return {"finding": "FTICL helps generation tasks generalize", "holds": holds, "ft_gain": plain,
            "fticl_gain": icl,
            "text": f"generation models' mean gain off their task: FT {_fmt(plain)}, FTICL {_fmt(icl)}"
                    + ("" if holds is None else f" ({'seen' if holds else 'not seen'} here)")}


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:+.3f}"
