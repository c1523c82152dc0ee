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
    from trainer.selection import select_top

    losses = torch.tensor([[2.0, 5.0, 1.0, 4.0], [3.0, 0.5, 6.0, 2.0]])
    base = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 9.0]])
    scored = torch.tensor([[True, True, False, True], [True, True, True, True]])
    # excess over scored positions: 1, 4, -, 3 | 2, -0.5, 5, -7; n = 7, 0.5 -> k = 4: 5, 4, 3, 2
    keep = select_top(losses, base, scored, 0.5)
    assert keep.tolist() == [[False, True, False, True], [True, False, True, False]]
    assert select_top(losses, base, scored, 1.0).tolist() == scored.tolist()
    assert select_top(losses, base, scored, 0.01).sum() == 1  # at least one: ceil
    ties = select_top(torch.ones(1, 4), torch.zeros(1, 4), torch.ones(1, 4, dtype=torch.bool), 0.5)
    assert ties.tolist() == [[True, True, False, False]]  # equal excess: the earlier positions
    assert not select_top(losses, base, torch.zeros(2, 4, dtype=torch.bool), 0.5).any()


def test_the_head_loss_with_selection_is_the_mean_over_the_kept_targets_and_its_gradient():
    """LossHead(select=...) against plain autograd: cross-entropy per target, the top 30 % by excess over the base
    kept, their mean; the same loss and the same gradients of the hidden states and the head's weight."""
    import torch.nn.functional as F

    from trainer.loss import LossHead
    from trainer.selection import select_top

    torch.manual_seed(0)
    head = LossHead(8, 16, bias=False)
    hidden = torch.randn(2, 5, 8, requires_grad=True)
    targets = torch.randint(0, 16, (2, 5))
    targets[0, 0] = -100
    base = torch.rand(2, 5) * 3
    loss = head(hidden, targets=targets, select=(base, 0.3))
    loss.backward()
    got = (loss.item(), hidden.grad.clone(), head.weight.grad.clone())
    hidden.grad, head.weight.grad = None, None
    per_token = F.cross_entropy(F.linear(hidden, head.weight).reshape(-1, 16), targets.reshape(-1),
                                reduction="none", ignore_index=-100).view(2, 5)
    keep = select_top(per_token, base, targets != -100, 0.3)
    assert keep.sum() == 3  # ceil(0.3 * 9)
    want = (per_token * keep).sum() / keep.sum()
    want.backward()
    assert got[0] == pytest.approx(want.item(), rel=1e-6)
    assert torch.allclose(got[1], hidden.grad, atol=1e-6) and torch.allclose(got[2], head.weight.grad, atol=1e-6)


def test_select_top_needs_the_head_loss_and_a_fraction_in_range():
    tree = {"model": {"path": "m", "loss_impl": "plain"}, "data": {"streams": [{"name": "d", "path": "x"}]},
            "loss": {"select_top": 0.6}}
    with pytest.raises(ConfigError, match="loss.select_top selects inside the chunked or fused head loss"):
        config_from_dict(tree)
    with pytest.raises(ConfigError, match="select_top"):
        config_from_dict({**tree, "model": {"path": "m"}, "loss": {"select_top": 1.5}})


def test_streams_that_cannot_be_scored_say_why(tmp_path):
    from trainer.data import Domain
    from trainer.scoring import scoring_problem

    remote = scoring_problem(Domain("web", tmp_path, "s3://bucket/web", {"kind": "lm"}), "m")
    assert "stream 'web' is remote (s3://bucket/web)" in remote and "prepare it locally" in remote
    task = scoring_problem(Domain("qa", tmp_path, None, {"kind": "task"}), "m")
    assert "stream 'qa' is task data" in task
    unscored = scoring_problem(Domain("d", tmp_path, None, {"kind": "lm"}), str(tmp_path))
    assert "stream 'd' has no base-model losses" in unscored and "run `odyssey score CONFIG`" in unscored
