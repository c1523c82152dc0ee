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
