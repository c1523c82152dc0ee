"""Tiny real assets for tests: a BPE tokenizer trained here with `tokenizers`, a tiny Llama saved with save_pretrained,
and small text domains. They load through the same from_pretrained path as multi-billion-parameter checkpoints."""
from __future__ import annotations

import json
import random
import sysconfig
from pathlib import Path

WORDS = ("the a of to and in is was he she it that for on with as his her at by had from not but be this which or "
         "river mountain light stone house garden window morning evening letter friend sister brother ship harbour "
         "walked spoke thought remembered opened carried quiet bright cold narrow ancient green").split()


def prose_docs(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    docs = []
    for _ in range(n):
        sentences = []
        for _ in range(rng.randint(3, 9)):
            words = [rng.choice(WORDS) for _ in range(rng.randint(5, 14))]
            sentences.append(" ".join(words).capitalize() + rng.choice([".", ".", "!", "?"]))
        docs.append(" ".join(sentences))
    return docs


def code_docs(n: int) -> list[str]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in stdlib.glob("*.py") if p.stat().st_size < 40_000)[:n]
    return [p.read_text(errors="replace") for p in files]


def write_text_dir(root: Path, docs: list[str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i, d in enumerate(docs):
        (root / f"doc{i:04d}.txt").write_text(d)
    return root


def write_jsonl(path: Path, docs: list[str], field: str = "text") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for i, d in enumerate(docs):
            f.write(json.dumps({"id": i, field: d}) + "\n")
    return path


def build_tokenizer(out: Path, texts: list[str], vocab_size: int = 512) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", unk_token="<unk>", pad_token="<eos>")
    fast.save_pretrained(out)
    return out


def build_tiny_llama(out: Path, vocab_size: int, seed: int = 0) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=False)
    LlamaForCausalLM(cfg).save_pretrained(out)
    return out


# Llama-2's published tokenizer.json decodes with these steps; converting a SentencePiece model does not add the Strip,
# which is what makes decoding one id drop its leading space.
def llama2_decoder():
    from tokenizers import decoders

    return decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                              decoders.Strip(" ", 1, 0)])


def build_sentencepiece_tokenizer(out: Path, texts: list[str], vocab_size: int = 400,
                                  llama2_normalizer: bool = False) -> Path:
    """A Llama-2-style tokenizer: a SentencePiece BPE model trained here (byte fallback, BOS added to every text),
    loaded as LlamaTokenizerFast and given Llama-2's decoder. `llama2_normalizer`: also Llama-2's published
    normalizer, a "▁" before every text and "▁" for every space, with which " positive" on its own starts with a
    spurious lone "▁" piece (id 29871 in Llama-2) that the same word after a prompt does not have."""
    import io

    import sentencepiece as spm
    from transformers import AutoTokenizer, LlamaTokenizerFast

    out.mkdir(parents=True, exist_ok=True)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(texts), model_writer=model, vocab_size=vocab_size,
                                   model_type="bpe", byte_fallback=True, character_coverage=1.0,
                                   normalization_rule_name="identity", remove_extra_whitespaces=False,
                                   split_digits=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
                                   user_defined_symbols=["\n"], minloglevel=2)
    (out / "tokenizer.model").write_bytes(model.getvalue())
    fast = LlamaTokenizerFast(vocab_file=str(out / "tokenizer.model"), legacy=False, add_bos_token=True,
                              add_eos_token=False)
    fast.backend_tokenizer.decoder = llama2_decoder()
    if llama2_normalizer:
        from tokenizers import normalizers

        fast.backend_tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"),
                                                                  normalizers.Replace(" ", "\u2581")])
        fast.backend_tokenizer.pre_tokenizer = None
    fast.save_pretrained(out)
    (out / "tokenizer.model").unlink()  # the fast tokenizer.json is what loads; no slow fallback
    return Path(AutoTokenizer.from_pretrained(out).name_or_path)


def build_neox_tokenizer(out: Path, texts: list[str], vocab_size: int = 512) -> Path:
    """An OLMo-style tokenizer: GPT-NeoX byte-level BPE (digits split, <|endoftext|> as EOS, no BOS added)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>", "<|padding|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|padding|>",
                                   bos_token="<|endoftext|>")
    fast.save_pretrained(out)
    return out
