import numpy as np
import pytest

from analysis.tokenstats import CATEGORIES, Vocab, categorize, escape, summarize


@pytest.mark.parametrize("piece,cat", [("\n", "newline_whitespace"), ("  ", "newline_whitespace"),
                                       (",", "punctuation"), (" (", "punctuation"), ("1999", "digits"),
                                       (" the", "function_words"), (" and", "function_words"),
                                       ("ing", "word_continuation"), (" river", "other"), ("The", "word_continuation")])
def test_categories(piece, cat):
    assert categorize(piece) == cat


def test_escape():
    assert escape("\n") == "\\n" and escape("a\tb") == "a\\tb" and escape("\x00") == "\\x00" and escape(" x") == " x"


def test_summary_shares_and_top_tokens():
    vocab = Vocab(text=[" the", "\n", "ing", ","], category=np.array(
        [CATEGORIES.index(c) for c in ("function_words", "newline_whitespace", "word_continuation", "punctuation")],
        dtype=np.int8))
    targets = np.array([[0, 1, 2, 3, 0, 1]])
    base = np.array([[1.0, 1.0, 1.0, 1.0, 1.0, 1.0]])
    cur = np.array([[2.0, 1.5, 0.5, 1.0, 2.0, 1.5]])  # Δ: the +2, \n +1, ing -0.5, "," 0
    s = summarize(targets, base, cur, vocab, top_k=1)
    assert s["total_delta"] == pytest.approx(2.5)
    assert s["topk_share"] == pytest.approx(2.0 / 2.5)
    assert [r["token"] for r in s["top_degrading"]] == [" the"]
    assert [r["token"] for r in s["top_improving"]] == ["ing"]
    assert s["category_share"]["function_words"] == pytest.approx(0.8)
    assert s["category_share"]["newline_whitespace"] == pytest.approx(0.4)
    assert s["category_share"]["word_continuation"] == pytest.approx(-0.2)
    assert sum(s["category_share"].values()) == pytest.approx(1.0)
