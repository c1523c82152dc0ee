import json
from types import SimpleNamespace

import numpy as np
import pytest

from analysis.baseline import BaselineCache
from analysis.tokenstats import CATEGORIES, TokenStats, Vocab
from analysis.transitions import code, low_to_high, low_to_high_markdown, threshold_of, transitions

VOCAB = Vocab(text=[" the", "\n", "ing", ","], category=np.array(
    [CATEGORIES.index(c) for c in ("function_words", "newline_whitespace", "word_continuation", "punctuation")],
    dtype=np.int8))
# Against τ = 1 nat (≤ τ is low), class and Δ of each position; -100 positions are not scored: were they counted,
# (0.0 → 9.0) would be one more lh of Δ 9 and (0.05 → 0.0) one more hl.
TARGETS = np.array([[0, 1, 2, 3, -100, 0],
                    [-100, 0, 2, 1, 3, 0]])
BASE = np.array([[0.5, 0.5, 2.0, 3.0, 0.0, 1.0],
                 [0.05, 0.2, 1.5, 0.1, 2.0, 0.8]])
NOW = np.array([[2.0, 0.7, 0.5, 3.5, 9.0, 1.5],    # lh +1.5, ll +0.2, hl -1.5, hh +0.5, -, lh +0.5 (base = τ: low)
                [0.0, 1.2, 1.0, 1.1, 1.8, 0.9]])   # -, lh +1.0, hl -0.5 (now = τ: low), lh +1.0, hh -0.2, ll +0.1


def test_shares_of_positions_and_of_the_change():
    t = transitions(TARGETS, BASE, NOW, VOCAB.category, 1.0, CATEGORIES)
    assert t["threshold"] == 1.0 and t["tokens"] == 10
    assert t["share"] == pytest.approx({"ll": 0.2, "lh": 0.4, "hl": 0.2, "hh": 0.2})
    assert t["dloss"] == pytest.approx({"ll": 0.3, "lh": 4.0, "hl": -2.0, "hh": 0.3})
    assert t["dloss_share"] == pytest.approx({"ll": 0.3 / 2.6, "lh": 4.0 / 2.6, "hl": -2.0 / 2.6, "hh": 0.3 / 2.6})
    assert sum(t["share"].values()) == pytest.approx(1.0) and sum(t["dloss_share"].values()) == pytest.approx(1.0)


def test_shares_per_category():
    cat = transitions(TARGETS, BASE, NOW, VOCAB.category, 1.0, CATEGORIES)["category"]
    assert set(cat) == set(CATEGORIES)
    fw = cat["function_words"]  # " the": lh +1.5, lh +0.5, lh +1.0, ll +0.1
    assert fw["tokens"] == 4 and fw["share"] == pytest.approx({"ll": 0.25, "lh": 0.75, "hl": 0.0, "hh": 0.0})
    assert fw["dloss_share"] == pytest.approx({"ll": 0.1 / 3.1, "lh": 3.0 / 3.1, "hl": 0.0, "hh": 0.0})
    nl = cat["newline_whitespace"]  # "\n": ll +0.2, lh +1.0
    assert nl["tokens"] == 2 and nl["share"] == pytest.approx({"ll": 0.5, "lh": 0.5, "hl": 0.0, "hh": 0.0})
    assert nl["dloss_share"] == pytest.approx({"ll": 0.2 / 1.2, "lh": 1.0 / 1.2, "hl": 0.0, "hh": 0.0})
    assert cat["word_continuation"]["share"]["hl"] == 1.0 and cat["word_continuation"]["dloss_share"]["hl"] == 1.0
    assert cat["punctuation"]["share"]["hh"] == 1.0 and cat["punctuation"]["dloss_share"]["hh"] == pytest.approx(1.0)
    for empty in ("digits", "other"):
        assert cat[empty]["tokens"] == 0 and set(cat[empty]["share"].values()) == {0.0}
    for name in ("function_words", "newline_whitespace", "word_continuation", "punctuation"):
        assert sum(cat[name]["share"].values()) == pytest.approx(1.0)
        assert sum(cat[name]["dloss_share"].values()) == pytest.approx(1.0)


def test_a_zero_total_change_has_zero_change_shares():
    t = transitions(np.array([[0, 1]]), np.array([[0.5, 2.0]]), np.array([[1.5, 1.0]]), VOCAB.category, 1.0,
                    CATEGORIES)
    assert t["share"] == {"ll": 0.0, "lh": 0.5, "hl": 0.5, "hh": 0.0}
    assert t["dloss"] == {"ll": 0.0, "lh": 1.0, "hl": -1.0, "hh": 0.0}
    assert set(t["dloss_share"].values()) == {0.0}


def test_threshold_kinds():
    losses = np.array([1.0, 2.0, 3.0, 4.0], dtype=np.float32)
    assert threshold_of(losses) == 2.5
    assert threshold_of(losses, "quantile", 0.25) == 1.75
    assert threshold_of(losses, "absolute", 0.7) == 0.7
    with pytest.raises(ValueError, match="quantile"):
        threshold_of(losses, "median")


def test_low_to_high_ranking_and_contexts():
    rows = low_to_high(TARGETS, BASE, NOW, 1.0, VOCAB)
    assert [(r["id"], r["token"], r["category"], r["count"]) for r in rows] == [
        (0, " the", "function_words", 3), (1, "\\n", "newline_whitespace", 1)]
    the, newline = rows
    assert the["delta_sum"] == pytest.approx(3.0) and newline["delta_sum"] == pytest.approx(1.0)
    assert the["mean_base_loss"] == pytest.approx(1.7 / 3) and the["mean_loss"] == pytest.approx(4.7 / 3)
    # largest Δ first: (0, 0) +1.5 and (1, 1) +1.0 have nothing scored before them; (0, 5) +0.5 does
    assert the["contexts"] == ["[ the]", "[ the]", " the\\ning,[ the]"]
    assert newline["contexts"] == [" theing[\\n]"]
    assert low_to_high(TARGETS, BASE, NOW, 1.0, VOCAB, top=1, contexts=1)[0]["contexts"] == ["[ the]"]
    assert low_to_high(TARGETS, BASE, NOW, 1.0, VOCAB, width=3)[0]["contexts"][2] == "ing,[ the]"
    assert low_to_high(TARGETS, BASE, BASE, 1.0, VOCAB) == []


def test_markdown_table_shows_tokens_as_they_are():
    assert code(" the") == "` the`" and code("a|b") == "`a\\|b`" and code("`x") == "`` `x ``" and code("") == "(empty)"
    table = low_to_high_markdown(low_to_high(TARGETS, BASE, NOW, 1.0, VOCAB), "prose", 3, 1.0)
    assert "| ` the` | function_words | 3 | 3 | 0.567 → 1.567 | `[ the]`<br>`[ the]`<br>` the\\ning,[ the]` |" in table
    assert "(none)" in low_to_high_markdown([], "prose", 3, 1.0)


def test_token_stats_logs_the_transitions(tmp_path):
    stats = TokenStats(tmp_path, BaselineCache(tmp_path, "m"), VOCAB, top_k=5)
    stats({"prose": SimpleNamespace(targets=TARGETS, losses=BASE)}, 0)
    metrics, _, files = stats({"prose": SimpleNamespace(targets=TARGETS, losses=NOW)}, 3)
    # the median of the scored base losses (0.8, 1.0); with the two unscored ones it would be (0.5 + 0.8) / 2
    assert metrics["tokens/prose/transition_threshold"] == pytest.approx(0.9)
    expect = transitions(TARGETS, BASE, NOW, VOCAB.category, metrics["tokens/prose/transition_threshold"],
                         CATEGORIES)
    for c in ("ll", "lh", "hl", "hh"):
        assert metrics[f"tokens/prose/{c}_share"] == expect["share"][c]
        assert metrics[f"tokens/prose/{c}_dloss_share"] == expect["dloss_share"][c]
        for cat in CATEGORIES:
            assert metrics[f"tokens/prose/cat/{cat}/{c}_share"] == expect["category"][cat]["share"][c]
    folder = tmp_path / "tokens" / "prose"
    assert (folder / "step_3_low_to_high.md", "tokens/prose") in files and (folder / "step_3.json", "tokens/prose") in files
    written = json.loads((folder / "step_3.json").read_text())
    assert written["transitions"]["share"] == expect["share"] and written["low_to_high"][0]["token"] == " the"
    assert "| ` the` | function_words |" in (folder / "step_3_low_to_high.md").read_text()
