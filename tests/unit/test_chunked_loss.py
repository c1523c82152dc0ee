"""The chunked head loss (trainer/loss.py) equals the model's own loss: training loss and every parameter's gradient,
eval's per-token losses, with IGNORE targets, packed rows and a tied head, over more than one chunk."""
import pytest
import torch

from data_prep.shards import IGNORE
from trainer.data import model_inputs
from trainer.loss import LossHead, chunk_rows, head_loss_supported, use_head_loss

VOCAB = 40_000  # chunk_rows(VOCAB) = 1677: the 2 × 1024 tokens below span two chunks


def tiny(tied: bool):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                      tie_word_embeddings=tied)
    return LlamaForCausalLM(cfg).float()


def batch(packed: bool) -> dict:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, VOCAB, (2, 1024), generator=g)
    labels = ids.clone()
    labels[0, :100] = IGNORE  # a prompt that takes no loss
    labels[1, 900:] = IGNORE  # padding
    out = {"input_ids": ids, "labels": labels}
    if packed:
        out["segment_ids"] = torch.cat([torch.zeros(2, 500, dtype=torch.long), torch.ones(2, 524, dtype=torch.long)], 1)
    return model_inputs(out, "sdpa", torch.float32)


def loss_and_grads(model, inputs: dict) -> tuple[float, dict]:
    model.zero_grad()
    loss = model(**inputs).loss
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("tied,packed", [(False, False), (True, True)])
def test_training_loss_and_gradients_equal_the_models_own(tied, packed):
    assert 1 < 2 * 1024 / chunk_rows(VOCAB) <= 2
    model = tiny(tied)
    inputs = batch(packed)
    want_loss, want_grads = loss_and_grads(model, dict(inputs))
    assert "chunked" in use_head_loss(model, "auto")
    assert isinstance(model.lm_head, LossHead)
    loss, grads = loss_and_grads(model, dict(inputs))
    assert loss == pytest.approx(want_loss, abs=1e-5)
    for name, want in want_grads.items():  # relative to the gradient's size: the gradients are ~1e-4 per element
        assert (grads[name] - want).norm() <= 1e-5 * want.norm(), name


def test_eval_per_token_losses_equal_the_logits_path():
    import torch.nn.functional as F

    model = tiny(False).eval()
    inputs = batch(False)
    with torch.no_grad():
        logits = model(input_ids=inputs["input_ids"]).logits[:, :-1].float()
        want = F.cross_entropy(logits.transpose(1, 2), inputs["labels"][:, 1:], reduction="none", ignore_index=IGNORE)
        use_head_loss(model, "chunked")
        got = model(**inputs, per_token=True).loss
        mean = model(**inputs).loss
        plain_logits = model(input_ids=inputs["input_ids"]).logits  # no labels: the model's own forward, logits
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert mean.item() == pytest.approx((want.sum() / (inputs["labels"][:, 1:] != IGNORE).sum()).item(), abs=1e-5)
    assert plain_logits.shape == (2, 1024, VOCAB)


def test_plain_and_unsupported_heads_keep_the_models_loss():
    model = tiny(False)
    assert "model's own" in use_head_loss(model, "plain")
    assert type(model.lm_head) is torch.nn.Linear
    model.config.final_logit_softcapping = 30.0
    assert "final_logit_softcapping" in head_loss_supported(model)
    assert "no chunked loss" in use_head_loss(model, "auto")
    with pytest.raises(ValueError, match="cannot apply"):
        use_head_loss(model, "chunked")
