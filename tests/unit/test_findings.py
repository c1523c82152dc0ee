"""The report's statements of the paper's three findings follow the numbers, whichever way they point."""
import math

from study.findings import carried_by_few_tokens, correlates_with_similarity, worse_on_own_domain


def row(domain, ppl0, ppl_last, total_delta=None, shares=None, counts=None, topk=0.5):
    return {"domain": domain, "label": domain, "ppl0": ppl0, "ppl_last": ppl_last, "delta_ppl": ppl_last - ppl0,
            "ppl_ratio": ppl_last / ppl0, "total_delta": total_delta, "topk_share": topk,
            "category_share": shares or {}, "category_count": counts or {}}


def corr(r, p):
    return {"pearson_r": r, "pearson_p": p, "spearman_rho": r, "spearman_p": p}


def test_worse_domains_are_named_with_their_numbers():
    text = worse_on_own_domain([row("a", 10, 12), row("b", 10, 9), row("c", 20, 21)])
    assert text.startswith("Seen here") and "2 of 3 domains" in text
    assert text.index("a 10.00 → 12.00 (+20.0%)") < text.index("c 20.00 → 21.00 (+5.0%)")  # worst first
    assert worse_on_own_domain([row("a", 10, 9), row("b", 10, 8)]).startswith("Not seen here")


def test_correlation_verdict_follows_sign_measure_and_p():
    assert correlates_with_similarity(corr(0.8, 0.01), "unigram_jsd", 5).startswith("Supported")
    assert correlates_with_similarity(corr(-0.8, 0.01), "emb_cosine", 5).startswith("Supported")  # a similarity
    assert correlates_with_similarity(corr(-0.8, 0.01), "unigram_jsd", 5).startswith("Contradicted")
    assert correlates_with_similarity(corr(0.5, 0.3), "unigram_jsd", 5).startswith(
        "Not supported at p < 0.05 (same direction)")
    assert correlates_with_similarity(corr(math.nan, math.nan), "unigram_jsd", 2).startswith("Not testable")


def test_token_shares_against_token_counts():
    shares = {"newline_whitespace": 0.3, "punctuation": 0.25, "function_words": 0.15, "other": 0.3}
    counts = {"newline_whitespace": 10, "punctuation": 10, "function_words": 20, "other": 60}
    text = carried_by_few_tokens([row("a", 10, 12, 250.0, shares, counts, topk=0.62)], 20)
    assert "a (worse by 250 nats): top-20 tokens 62%, uninformative categories 70% of the change while 40% of the " \
           "tokens" in text
    assert carried_by_few_tokens([row("a", 10, 12)], 20).startswith("Not testable")
