"""Token-selective loss (loss.exclude_categories): the target positions whose token's category (the analysis's own
categories) is excluded get label -100, exactly those, and nothing else changes; an unknown category is one line."""
import numpy as np
import pytest
import torch

from data_prep.config import ConfigError, validate
from trainer.config import LossCfg, config_from_dict
from trainer.data import drop_excluded, excluded_targets


def test_excluded_categories_get_no_loss_exactly_on_their_targets(assets):
    from transformers import AutoTokenizer

    from analysis.tokenstats import CATEGORIES, Vocab

    tok = AutoTokenizer.from_pretrained(assets["model"])
    cfg = config_from_dict({"model": {"path": str(assets["model"])}, "data": {"streams": [{"name": "d", "path": "x"}]},
                            "loss": {"exclude_categories": ["function_words", "punctuation"]}})
    excluded = excluded_targets(tok, cfg, torch.device("cpu"))
    category = Vocab.from_tokenizer(tok).category
    want = np.isin(category, [CATEGORIES.index("function_words"), CATEGORIES.index("punctuation")])
    assert excluded.dtype == torch.bool and excluded.numpy().tolist() == want.tolist() and 0 < want.sum() < len(want)
    labels = torch.from_numpy(np.random.default_rng(0).integers(0, len(tok), size=(4, 64)))
    labels[0, :5] = -100  # a prompt: stays as it is
    out = drop_excluded(labels, excluded)
    was_target = labels >= 0
    hit = was_target & torch.from_numpy(want)[labels.clamp(min=0)]
    assert hit.any() and (out[hit] == -100).all()
    assert torch.equal(out[~hit], labels[~hit])
    assert excluded_targets(tok, config_from_dict({**cfg.model_dump(mode="json"), "loss": {}}),
                            torch.device("cpu")) is None


def test_an_unknown_category_is_refused_naming_the_categories():
    with pytest.raises(ConfigError, match="unknown token category 'stopwords' \\(the categories: newline_whitespace"):
        validate(LossCfg, {"exclude_categories": ["stopwords"]})


def test_rho1_selection_keeps_exactly_the_top_fraction_by_excess_loss():
    from trainer.selection import select_top, selective_loss

    losses = torch.tensor([[2.0, 5.0, 1.0, 4.0], [3.0, 0.5, 6.0, 2.0]])
    base = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 9.0]])
    scored = torch.tensor([[True, True, False, True], [True, True, True, True]])
    # excess over scored positions: 1, 4, -, 3 | 2, -0.5, 5, -7; n = 7, 0.5 -> k = 4: 5, 4, 3, 2
    keep = select_top(losses, base, scored, 0.5)
    assert keep.tolist() == [[False, True, False, True], [True, False, True, False]]
    assert selective_loss(losses, keep).item() == pytest.approx((5 + 4 + 3 + 6) / 4)
    assert select_top(losses, base, scored, 1.0).tolist() == scored.tolist()
    assert select_top(losses, base, scored, 0.01).sum() == 1  # at least one: ceil
    ties = select_top(torch.ones(1, 4), torch.zeros(1, 4), torch.ones(1, 4, dtype=torch.bool), 0.5)
    assert ties.tolist() == [[True, True, False, False]]  # equal excess: the earlier positions
    none = torch.zeros(1, 4, dtype=torch.bool)
    assert selective_loss(losses[:1], select_top(losses[:1], base[:1], none, 0.5)).item() == 0.0
