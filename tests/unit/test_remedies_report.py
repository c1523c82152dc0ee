"""study/remedies.py on hand-made numbers: the leave-one-out fit of Δppl on similarity, recomputed by hand, and the
variant table with the best variant on each axis."""
import math

import pytest

from study.remedies import loo_fit, remedy_metrics, variant_table


def test_loo_fit_matches_a_recomputation_by_hand():
    xs, ys = [0.1, 0.2, 0.4, 0.8], [1.0, 2.0, 2.5, 6.0]
    fit = loo_fit(xs, ys)

    def line(px, py):  # least squares by the textbook formulas
        mx, my = sum(px) / len(px), sum(py) / len(py)
        b = sum((x - mx) * (y - my) for x, y in zip(px, py)) / sum((x - mx) ** 2 for x in px)
        return my - b * mx, b

    a, b = line(xs, ys)
    assert fit["slope"] == pytest.approx(b) and fit["intercept"] == pytest.approx(a)
    errors = []
    for i in range(4):
        a_i, b_i = line(xs[:i] + xs[i + 1:], ys[:i] + ys[i + 1:])
        errors.append(a_i + b_i * xs[i] - ys[i])
    assert fit["loo_rmse"] == pytest.approx(math.sqrt(sum(e * e for e in errors) / 4))
    assert fit["loo_mae"] == pytest.approx(sum(abs(e) for e in errors) / 4)
    mean = sum(ys) / 4
    assert fit["std"] == pytest.approx(math.sqrt(sum((y - mean) ** 2 for y in ys) / 4))
    assert math.isnan(loo_fit([0.1, 0.2], [1.0, 2.0])["loo_rmse"]) and math.isnan(loo_fit([1, 1, 1], [1, 2, 3])["slope"])


def row(domain, variant, delta, forgetting, depth=0.0):
    return {"model": "m", "domain": domain, "variant": variant, "label": f"{domain}/{variant}", "delta_ppl": delta,
            "ppl_ratio": 1 + delta / 10, "forgetting": forgetting,
            "gap": {"depth": depth, "worst_step": 2.0 if depth else None, "recovery_step": None}, "ref_gap": None}


def test_variant_table_names_the_best_variant_on_each_axis():
    rows = [row("law", "plain", 1.5, 0.20, 0.3), row("law", "replay", 2.0, 0.05), row("law", "nofunc", 0.5, 0.30),
            row("code", "plain", -3.0, 0.10), row("code", "replay", -2.0, None)]
    table = variant_table(rows)
    assert [(t["domain"], t["best"]) for t in table] == [("law", {"domain": "nofunc", "forgetting": "replay"}),
                                                         ("code", {"domain": "plain", "forgetting": "plain"})]
    assert list(table[0]["variants"]) == ["plain", "replay", "nofunc"]
    metrics, tags = remedy_metrics(rows, table, {"m": loo_fit([0.1, 0.2, 0.3], [1.0, 2.0, 2.9])})
    assert metrics["study/law/plain/forgetting"] == 0.2 and metrics["study/law/plain/gap_depth"] == 0.3
    assert "study/code/replay/forgetting" not in metrics and metrics["study/fit/slope"] == pytest.approx(9.5)
    assert tags == {"study.best.m.law.domain": "nofunc", "study.best.m.law.forgetting": "replay",
                    "study.best.m.code.domain": "plain", "study.best.m.code.forgetting": "plain"}
