"""Issue 13's first brick: a task example becomes (input_ids, labels) with the loss on the target and its EOS only;
prompts are cut from the left, never the target; demonstrations (FTICL) go in front of the prompt and are masked;
BOS starts the sequence where the tokenizer adds one. Checked with a byte-level BPE and a SentencePiece tokenizer."""
import random

import pytest

from data_prep.shards import IGNORE
from data_prep.task_examples import Encoder, Example, demo_block
from data_prep.tokenize import document_bos, load_tokenizer
from tests import tiny


@pytest.fixture(scope="module", params=["bpe", "sentencepiece"])
def tok(request, tmp_path_factory):
    texts = tiny.prose_docs(80)
    root = tmp_path_factory.mktemp(request.param)
    build = tiny.build_tokenizer if request.param == "bpe" else tiny.build_sentencepiece_tokenizer
    return load_tokenizer(str(build(root / "tok", texts)))


def encoder(tok, max_len=64, template="Text: {input}\nLabel:"):
    return Encoder(tok, template, max_len, document_bos(tok))


def test_loss_only_on_the_target_and_its_eos(tok):
    enc = encoder(tok)
    ids, labels = enc.encode(Example({"input": "the river runs north"}, " positive"))
    target = tok(" positive", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    n = len(target)
    assert list(ids[-n:]) == target and list(labels[-n:]) == target
    assert (labels[:-n] == IGNORE).all() and len(ids) == len(labels)
    assert tok.decode(ids[:-n], skip_special_tokens=True).endswith("Text: the river runs north\nLabel:")
    bos = document_bos(tok)
    assert (ids[0] == bos) if bos is not None else (tok.bos_token_id is None or ids[0] != tok.bos_token_id)


def test_long_prompts_lose_their_left_never_the_target(tok):
    enc = encoder(tok, max_len=24)
    long_input = " ".join(["word"] * 200) + " END"
    ids, labels = enc.encode(Example({"input": long_input}, " the summary here"))
    target = tok(" the summary here", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert len(ids) == 24 and list(ids[-len(target):]) == target
    assert tok.decode(ids[:-len(target)], skip_special_tokens=True).endswith("END\nLabel:")  # the right end stays
    assert enc.encode(Example({"input": "x"}, " " + "very long target " * 40)) is None and enc.dropped == 1


def test_demonstrations_are_masked_and_cut_first(tok):
    pool = [Example({"input": f"sentence number {i}"}, f" label{i}") for i in range(6)]
    enc = encoder(tok, max_len=256)
    demos = demo_block(pool, 2, "first", random.Random(0))
    ids, labels = enc.encode(Example({"input": "the query"}, " yes"), demos)
    text = tok.decode(ids, skip_special_tokens=True)
    assert "sentence number 0\nLabel: label0\n\nText: sentence number 1\nLabel: label1\n\nText: the query" in text
    n_target = len(tok(" yes", add_special_tokens=False)["input_ids"]) + 1
    assert (labels[:-n_target] == IGNORE).all()  # no loss on the demonstrations or the prompt
    short = encoder(tok, max_len=20).encode(Example({"input": "the query"}, " yes"), demos)
    assert tok.decode(short[0], skip_special_tokens=True).endswith("the query\nLabel: yes")


def test_sampled_demonstrations_are_seeded_and_never_the_example():
    pool = [Example({"input": str(i)}, str(i)) for i in range(10)]
    a = demo_block(pool, 3, "sample", random.Random(5), exclude=pool[0])
    assert a == demo_block(pool, 3, "sample", random.Random(5), exclude=pool[0]) and pool[0] not in a
    assert demo_block(pool, 3, "first", random.Random(5)) == pool[:3] and demo_block(pool, 0, "first", None) == []


def test_pair_templates_take_several_fields(tok):
    enc = Encoder(tok, "Premise: {premise}\nHypothesis: {hypothesis}\nEntailment:", 96, document_bos(tok))
    ids, labels = enc.encode(Example({"premise": "the sea is calm", "hypothesis": "the sea is still"}, " yes"))
    assert "Premise: the sea is calm\nHypothesis: the sea is still\nEntailment: yes" in tok.decode(
        ids, skip_special_tokens=True)
