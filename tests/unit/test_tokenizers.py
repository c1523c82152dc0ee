"""The three tokenizer families a study meets, each built here: Llama-2-style SentencePiece (with Llama-2's decoder),
GPT-2 byte-level BPE and OLMo's GPT-NeoX-style BPE. Token categories come from the vocabulary pieces, and prep starts
every document with BOS exactly where the tokenizer adds one."""
import numpy as np
import pytest

from analysis.tokenstats import CATEGORIES, Vocab
from data_prep.manifest import read_manifest
from data_prep.prepare import PrepOptions, prepare_domain
from data_prep.shards import TOKENS, open_split
from tests import tiny

FAMILIES = {"llama2_sentencepiece": tiny.build_sentencepiece_tokenizer, "gpt2_bpe": tiny.build_tokenizer,
            "olmo_neox_bpe": tiny.build_neox_tokenizer}


def docs():
    # newlines inside documents, commas, and " the" after a word, as in real text
    return [d.replace(". ", ".\n", 2) + " Then the end, the river." for d in tiny.prose_docs(200, seed=3)]


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request, tmp_path_factory):
    from transformers import AutoTokenizer

    out = tmp_path_factory.mktemp(request.param)
    FAMILIES[request.param](out / "tok", docs())
    return request.param, out, AutoTokenizer.from_pretrained(out / "tok")


def the_id(tok, text, piece):
    """The id that encodes `piece` inside `text`."""
    ids = tok(text, add_special_tokens=False)["input_ids"]
    vocab = Vocab.from_tokenizer(tok)
    found = [i for i in ids if vocab.text[i] == piece]
    assert found, (piece, [vocab.text[i] for i in ids])
    return found[0], vocab


def test_categories_come_from_the_vocabulary_pieces(family):
    name, _, tok = family
    expected = {" the": "function_words", ",": "punctuation", "\n": "newline_whitespace"}
    for piece, category in expected.items():
        i, vocab = the_id(tok, "Walked by the river, then\nthe house.", piece)
        assert CATEGORIES[vocab.category[i]] == category, (name, piece, vocab.text[i])
    if name == "llama2_sentencepiece":  # the trap: decoding the id alone strips the space Llama-2's decoder removes
        i, _ = the_id(tok, "Walked by the river", " the")
        assert tok.decode([i]) == "the"


def test_bos_starts_every_document_where_the_tokenizer_adds_one(family):
    name, out, tok = family
    prepare_domain(tiny.write_text_dir(out / "src", docs()), out / "domains", "d", str(out / "tok"), 64,
                   PrepOptions(progress=False, workers=0))
    manifest = read_manifest(out / "domains" / "d")
    adds_bos = name == "llama2_sentencepiece"
    assert (manifest["tokenizer"]["bos_id"] == tok.bos_token_id) if adds_bos else manifest["tokenizer"]["bos_id"] is None
    ds = open_split(out / "domains" / "d" / "train")
    rows = np.stack([ds[i][TOKENS] for i in range(ds.num_samples)])
    flat = rows.reshape(-1)
    after_eos = flat[1:][flat[:-1] == tok.eos_token_id]
    assert len(after_eos) > 10
    if adds_bos:
        assert rows[0, 0] == tok.bos_token_id  # the first document starts the first row
        assert (after_eos == tok.bos_token_id).all()  # every later document too
        assert (flat == tok.bos_token_id).sum() >= manifest["splits"]["train"]["docs"] - 1
    else:
        assert not (after_eos == tok.eos_token_id).any()  # one EOS between documents, no BOS (OLMo: BOS == EOS)
        assert tok.bos_token_id is None or tok.bos_token_id == tok.eos_token_id or \
            not (flat == tok.bos_token_id).any()


def test_a_model_folder_without_tokenizer_files_is_one_line(tmp_path):
    from transformers import GPT2Config

    from data_prep.config import ConfigError
    from data_prep.tokenize import load_tokenizer

    GPT2Config(n_layer=1).save_pretrained(tmp_path / "m")  # config.json alone: AutoTokenizer picks GPT2's classes
    with pytest.raises(ConfigError, match="model.path .*: cannot load a tokenizer"):
        load_tokenizer(str(tmp_path / "m"), "model.path")
