"""Adapt or not: what a study's variants (remedies) did per domain, and how well similarity alone predicts the change
before any training. Pure: the report's rows in (study/report.py: collect_rows), tables and numbers out.

Per run (a model on a domain in a variant), from its last eval:
- delta_ppl: the domain's own test perplexity minus at step 0 (what adaptation gained: negative is better);
- forgetting: ppl / ppl at step 0 − 1 on the model's reference (the stand-in for its pretraining data: positive is
  ability lost);
- the stability gap of both (analysis/stability.py): depth, and the step the run was back at the base model;
- the token transitions on the domain (analysis/transitions.py): the shares of scored positions low→high (known to
  the base model, lost) and high→low (learned).

Per model and domain, the best variant on each axis: the lowest delta_ppl, the lowest forgetting.

The fit: ordinary least squares of delta_ppl on the primary similarity measure across the study's domains (the first
variant's runs), y ≈ a + b·x, and its leave-one-out error: for each domain i, the line fitted without it predicts
ŷ_i; loo_rmse = sqrt(mean (ŷ_i − y_i)²), loo_mae = mean |ŷ_i − y_i|. Next to the spread of delta_ppl itself (its
standard deviation, what predicting the mean would miss by), it says how much similarity alone tells before training.
"""
from __future__ import annotations

import math

import numpy as np

AXES = {"domain": "delta_ppl", "forgetting": "forgetting"}  # the two axes a variant is best on, lowest first


def loo_fit(xs: list[float], ys: list[float]) -> dict:
    """OLS line of ys on xs and its leave-one-out errors; NaN where fewer than 3 points or no spread in xs."""
    x, y = np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)
    nan = float("nan")
    if len(x) < 3 or np.ptp(x) == 0:
        return {"n": len(x), "slope": nan, "intercept": nan, "loo_rmse": nan, "loo_mae": nan,
                "std": float(np.std(y)) if len(y) else nan, "predicted": [nan] * len(x)}
    slope, intercept = np.polyfit(x, y, 1)
    predicted = []
    for i in range(len(x)):
        keep = np.arange(len(x)) != i
        if np.ptp(x[keep]) == 0:
            predicted.append(float(np.mean(y[keep])))
            continue
        b, a = np.polyfit(x[keep], y[keep], 1)
        predicted.append(float(a + b * x[i]))
    err = np.asarray(predicted) - y
    return {"n": len(x), "slope": float(slope), "intercept": float(intercept),
            "loo_rmse": float(math.sqrt(np.mean(err ** 2))), "loo_mae": float(np.mean(np.abs(err))),
            "std": float(np.std(y)), "predicted": predicted}


def variant_table(rows: list[dict]) -> list[dict]:
    """One entry per model and domain: each variant's numbers side by side, and the best variant on each axis
    (None on an axis no run measured)."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["domain"]), []).append(r)
    table = []
    for (model, domain), runs in groups.items():
        variants = {r["variant"]: {k: r.get(k) for k in ("label", "delta_ppl", "ppl_ratio", "forgetting", "gap",
                                                         "ref_gap", "transitions")} for r in runs}
        best = {}
        for axis, key in AXES.items():
            measured = [r for r in runs if r.get(key) is not None and r[key] == r[key]]
            best[axis] = min(measured, key=lambda r: r[key])["variant"] if measured else None
        table.append({"model": model, "domain": domain, "variants": variants, "best": best})
    return table


def remedy_metrics(rows: list[dict], table: list[dict], fits: dict[str, dict]) -> tuple[dict, dict]:
    """(metrics, tags) for the parent run: per run its forgetting and gap depths, per model the fit, per model and
    domain the best variant on each axis (a tag: a name, not a number)."""
    metrics, tags = {}, {}
    for r in rows:
        for key, value in (("forgetting", r.get("forgetting")), ("gap_depth", (r.get("gap") or {}).get("depth")),
                           ("ref_gap_depth", (r.get("ref_gap") or {}).get("depth"))):
            if value is not None and value == value:
                metrics[f"study/{r['label']}/{key}"] = value
    for model, fit in fits.items():
        prefix = "study/fit" if len(fits) == 1 else f"study/{model}/fit"
        metrics.update({f"{prefix}/{k}": v for k, v in fit.items() if k != "predicted" and v == v})
    for entry in table:
        for axis, variant in entry["best"].items():
            if variant is not None:
                tags[f"study.best.{entry['model']}.{entry['domain']}.{axis}"] = variant
    return metrics, tags
