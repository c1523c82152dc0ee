"""The three findings of "Adaptation Odyssey" (Ermis et al., 2024), stated as tested on this study's data:

1. same-domain test perplexity can get worse with continued pretraining on that domain;
2. how much worse correlates with the domain's similarity to the model's original pretraining data;
3. a few uninformative tokens (newlines and whitespace, punctuation, function words) carry the degradation.

Each statement gives the numbers that support or contradict it; none is assumed. Pure: rows in, sentences out; a
row's `label` names its run (the domain, or model/domain).
"""
from __future__ import annotations

UNINFORMATIVE = ("newline_whitespace", "punctuation", "function_words")
ALPHA = 0.05


def worse_on_own_domain(rows: list[dict]) -> str:
    worse = sorted((r for r in rows if r["delta_ppl"] > 0), key=lambda r: -r["ppl_ratio"])
    n = len(rows)
    what = "domains" if all(r["label"] == r["domain"] for r in rows) else "runs (model/domain)"
    if not worse:
        best = min(rows, key=lambda r: r["ppl_ratio"])
        return (f"Not seen here: same-domain test perplexity improved on all {n} {what} (ratios to step 0 from "
                f"{best['ppl_ratio']:.3f} to {max(r['ppl_ratio'] for r in rows):.3f}).")
    listed = ", ".join(f"{r['label']} {r['ppl0']:.2f} → {r['ppl_last']:.2f} ({r['ppl_ratio'] - 1:+.1%})" for r in worse)
    return f"Seen here: same-domain test perplexity got worse on {len(worse)} of {n} {what}: {listed}."


def correlates_with_similarity(corr: dict, measure: str, n: int) -> str:
    r, p, rho, p_rho = corr["pearson_r"], corr["pearson_p"], corr["spearman_rho"], corr["spearman_p"]
    if r != r:  # NaN: fewer than 3 domains, or no spread
        return f"Not testable here: {n} domain(s) give no correlation of Δppl with {measure}."
    numbers = f"Pearson r = {r:.3f} (p = {p:.3g}), Spearman ρ = {rho:.3f} (p = {p_rho:.3g}), n = {n}"
    distance = not measure.endswith("cosine")
    # the finding: less similar (larger distance, smaller cosine) → larger Δppl
    direction = r > 0 if distance else r < 0
    if p < ALPHA and direction:
        verdict = "Supported"
    elif p < ALPHA:
        verdict = "Contradicted (significant, in the opposite direction)"
    else:
        verdict = f"Not supported at p < {ALPHA}" + (" (same direction)" if direction else " (opposite direction)")
    return f"{verdict}: Δppl against {measure} to the reference, {numbers}."


def carried_by_few_tokens(rows: list[dict], top_k: int) -> str:
    parts = []
    for r in rows:
        if r.get("total_delta") is None:
            continue
        shares, counts = r["category_share"], r.get("category_count", {})
        share = sum(shares.get(c, 0.0) for c in UNINFORMATIVE)
        total_count = sum(counts.values()) or 1
        occurrence = sum(counts.get(c, 0) for c in UNINFORMATIVE) / total_count
        sense = "worse" if r["total_delta"] > 0 else "better"
        parts.append(f"{r['label']} ({sense} by {abs(r['total_delta']):.0f} nats): top-{top_k} tokens "
                     f"{r['topk_share']:.0%}, uninformative categories {share:.0%} of the change while "
                     f"{occurrence:.0%} of the tokens")
    if not parts:
        return "Not testable here: no token statistics (eval.token_stats was off)."
    return ("Share of each domain's summed Δloss on its own test split at the last eval (the finding holds where a "
            "domain got worse and few tokens or the uninformative categories carry most of it): " + "; ".join(parts)
            + ".")


def findings(rows: list[dict], corr: dict, measure: str, top_k: int) -> list[str]:
    return [worse_on_own_domain(rows), correlates_with_similarity(corr, measure, len(rows)),
            carried_by_few_tokens(rows, top_k)]
