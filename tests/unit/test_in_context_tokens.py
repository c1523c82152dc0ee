"""Targets and label words are the tokens their text gets after the prompt, on the three tokenizer families a study
meets (Llama-2-style SentencePiece with Llama-2's normalizer and decoder, GPT-2 byte-level BPE, GPT-NeoX BPE); and
greedy generation stops on what the model generated, never on the prompt, whatever the model folder's
generation_config says."""
import random

import pytest
import torch
import torch.nn.functional as F

from analysis.task_scores import cut_generation
from data_prep.shards import IGNORE
from data_prep.task_examples import Encoder, Example, demo_block
from data_prep.tokenize import document_bos
from tests import tiny
from trainer.task_eval import greedy, label_logprobs

FAMILIES = {"llama2_sentencepiece": lambda out, texts: tiny.build_sentencepiece_tokenizer(out, texts,
                                                                                          llama2_normalizer=True),
            "gpt2_bpe": tiny.build_tokenizer, "neox_bpe": tiny.build_neox_tokenizer}
TEMPLATE = "Review: {input}\nSentiment:"
LABELS = [" positive", " negative", " the end"]


def texts():
    return [d + " Sentiment: positive. The end, the river." for d in tiny.prose_docs(200, seed=3)]


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request, tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp(request.param)
    FAMILIES[request.param](out, texts())
    tok = AutoTokenizer.from_pretrained(out)
    tiny.build_tiny_llama(out, len(tok))
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    return request.param, tok, model


def in_context(tok, prompt: str, target: str) -> tuple[list[int], list[int]]:
    """The reference split, by another rule than Encoder.split_ids (offsets): prompt + target tokenized as one
    string, the prompt's part being the longest prefix it shares with the prompt tokenized alone."""
    full = tok(prompt + target, add_special_tokens=False)["input_ids"]
    alone = tok(prompt, add_special_tokens=False)["input_ids"]
    n = next((i for i, (a, b) in enumerate(zip(full, alone)) if a != b), min(len(full), len(alone)))
    return full[:n], full[n:]


def encoder(tok, template: str = TEMPLATE, max_len: int = 256) -> Encoder:
    return Encoder(tok, template, max_len, document_bos(tok))


@pytest.mark.parametrize("demos", [0, 2])
def test_training_targets_are_the_in_context_tokens(family, demos):
    _, tok, _ = family
    enc = encoder(tok)
    pool = [Example({"input": f"the river {i}"}, LABELS[i % 2]) for i in range(3)]
    ex = Example({"input": "Then the end."}, " positive")
    ids, labels = enc.encode(ex, pool[:demos])
    prompt, target = in_context(tok, enc.prompt(ex, pool[:demos]), ex.target)
    head = [] if enc.bos_id is None else [enc.bos_id]
    assert ids.tolist() == head + prompt + target + [tok.eos_token_id]
    assert labels.tolist() == [IGNORE] * (len(head) + len(prompt)) + target + [tok.eos_token_id]
    assert tok.decode(target).strip() == "positive"


def test_a_token_across_the_prompts_end_goes_to_the_target(family):
    """A template ending in a space: the space and the target's first word are one token in context; it belongs to
    the target (the prompt keeps only the tokens wholly inside it), so the target's ids cover all its characters."""
    _, tok, _ = family
    enc = encoder(tok, "Review: {input}\nPlace: ")
    prompt_text = enc.prompt(Example({"input": "the end"}, "river"), [])
    prompt, target = enc.split_ids(prompt_text, "river")
    full = tok(prompt_text + "river", add_special_tokens=False)["input_ids"]
    assert prompt + target == full and tok.convert_ids_to_tokens(target)[0][1:] == "river"  # "▁river" / "Ġriver"
    alone = tok(prompt_text, add_special_tokens=False)["input_ids"]
    assert alone[:-1] == prompt and tok.convert_ids_to_tokens(alone[-1:]) in (["\u2581"], ["\u0120"])  # the space
    assert (prompt, target) == in_context(tok, prompt_text, "river")


def reference_logprob(model, tok, prompt_text: str, label: str, bos: int | None) -> float:
    """One unpadded forward on prompt + label tokenized as one string; the label's part summed."""
    prompt, option = in_context(tok, prompt_text, label)
    ids = ([] if bos is None else [bos]) + prompt + option
    with torch.no_grad():
        logp = F.log_softmax(model(input_ids=torch.tensor([ids])).logits[0, :-1].float(), -1)
    start = len(ids) - len(option)
    return sum(logp[start - 1 + j, t].item() for j, t in enumerate(option))


def test_label_word_log_likelihood_is_one_forward_on_prompt_and_label_as_one_string(family):
    name, tok, model = family
    enc = encoder(tok)
    examples = [Example({"input": text}, LABELS[0]) for text in ("the river", "Then the end, the river rises.")]
    pairs = [pair for ex in examples for pair in enc.option_ids(ex, [], LABELS)]
    with torch.no_grad():
        scores = label_logprobs(model, pairs, len(LABELS), tok.eos_token_id, torch.device("cpu"))
    for i, ex in enumerate(examples):
        for j, label in enumerate(LABELS):
            expected = reference_logprob(model, tok, enc.prompt(ex, []), label, enc.bos_id)
            assert scores[i, j].item() == pytest.approx(expected, abs=1e-4), (name, label)
    alone = tok(" positive", add_special_tokens=False)["input_ids"]
    in_ctx = in_context(tok, enc.prompt(examples[0], []), " positive")[1]
    if name == "llama2_sentencepiece":  # the trap: on its own, " positive" starts with a lone "▁" piece
        assert tok.convert_ids_to_tokens(alone)[0] == "\u2581" and alone[1:] == in_ctx
    else:
        assert alone == in_ctx


def test_first_mode_demonstrations_never_hold_the_example_itself():
    pool = [Example({"input": str(i)}, "x") for i in range(5)]
    assert demo_block(pool, 2, "first", random.Random(0), pool[1]) == [pool[0], pool[2]]
    assert demo_block(pool, 2, "first", random.Random(0), pool[4]) == pool[:2]


def test_strip_then_cut():
    assert cut_generation("\n\nThe river rises\n\nText: more") == "The river rises"
    assert cut_generation(" a title\n\nText: more") == "a title" and cut_generation("x\ny") == "x\ny"


# ---------------------------------------------------------------- greedy generation

ANSWER_ON_THE_NEXT_LINE = "Text: the river rises\nHeadline:\n\nThe river rises\n\nText: the end"


@pytest.fixture(scope="module")
def next_line_model(tmp_path_factory):
    """A tiny Llama trained until it answers "Headline:\\n" with a newline, then the headline, then a blank line."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("next_line")
    tiny.build_tokenizer(out, tiny.prose_docs(80), vocab_size=300)  # prose only: no "\n\n" merge
    tok = AutoTokenizer.from_pretrained(out)
    tiny.build_tiny_llama(out, len(tok))
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    ids = torch.tensor([tok(ANSWER_ON_THE_NEXT_LINE)["input_ids"]])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(300):
        loss = model(input_ids=ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    prompt = tok("Text: the river rises\nHeadline:\n")["input_ids"]
    return tok, model.eval(), prompt


def argmax_continuation(model, prompt: list[int], n: int) -> list[int]:
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            ids.append(int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(prompt):]


def test_a_template_ending_in_a_newline_does_not_stop_generation_at_once(next_line_model):
    tok, model, prompt = next_line_model
    raw = tok.decode(argmax_continuation(model, prompt, 20))
    assert raw.startswith("\nThe river rises\n\n"), raw  # the case: prompt + first new token already end in "\n\n"
    assert greedy(model, [prompt], 20, tok, torch.device("cpu"), False) == ["The river rises"]


def test_greedy_ignores_the_model_folders_sampling_and_penalty_fields(next_line_model):
    tok, model, prompt = next_line_model
    expected = cut_generation(tok.decode(argmax_continuation(model, prompt, 20), skip_special_tokens=True))
    saved = model.generation_config
    try:
        model.generation_config = saved.__class__(do_sample=True, temperature=5.0, top_k=3, repetition_penalty=5.0,
                                                  no_repeat_ngram_size=1, max_new_tokens=2)
        torch.manual_seed(0)
        assert greedy(model, [prompt], 20, tok, torch.device("cpu"), False) == [expected]
    finally:
        model.generation_config = saved
