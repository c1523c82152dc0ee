"""The shared workload of the training benchmarks: a Llama built from config, a BPE tokenizer trained here, and one
prepared domain of real text (the Python stdlib), so every contender trains the same model on the same tokens."""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


@dataclass
class Shape:
    """A Llama's size. `cpu` is the 16.9M-parameter model of the CPU benchmarks; `tinyllama` is TinyLlama-1.1B's."""
    vocab: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int


SHAPES = {
    "cpu": Shape(vocab=8192, hidden=384, layers=6, heads=6, kv_heads=6, intermediate=1024),
    "tinyllama": Shape(vocab=32000, hidden=2048, layers=22, heads=32, kv_heads=4, intermediate=5632),
    "llama2-7b": Shape(vocab=32000, hidden=4096, layers=32, heads=32, kv_heads=32, intermediate=11008),
}


def stdlib_docs(max_bytes: int) -> list[str]:
    """Real text: Python stdlib sources, whole files in a fixed order, up to about `max_bytes`."""
    import sysconfig

    docs, size = [], 0
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py")):
        if size >= max_bytes:
            break
        text = path.read_text(errors="replace")
        docs.append(text)
        size += len(text)
    return docs


def build(root: Path, shape: Shape, seq_len: int, text_mb: float = 4.0,
          tokenizer_vocab: int = 8192) -> tuple[Path, Path]:
    """(model folder, prepared domain folder) under `root`, built once (a second call reuses them). The tokenizer has
    `tokenizer_vocab` entries; the model's embedding has the shape's vocab (or the tokenizer's, if larger)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from data_prep.pack import SplitFractions
    from data_prep.prepare import PrepOptions, prepare_domain
    from tests import tiny

    model, domain = root / "model", root / "domains" / "code"
    if not (model / "config.json").is_file():
        tiny.build_tokenizer(model, stdlib_docs(2_000_000), vocab_size=tokenizer_vocab)
        vocab = max(shape.vocab, len(AutoTokenizer.from_pretrained(model)))
        cfg = LlamaConfig(vocab_size=vocab, hidden_size=shape.hidden, intermediate_size=shape.intermediate,
                          num_hidden_layers=shape.layers, num_attention_heads=shape.heads,
                          num_key_value_heads=shape.kv_heads, max_position_embeddings=max(seq_len, 2048),
                          tie_word_embeddings=False)
        LlamaForCausalLM(cfg).save_pretrained(model)
    if not (domain / "manifest.json").is_file():
        src = tiny.write_text_dir(root / "src", stdlib_docs(int(text_mb * 1e6)))
        prepare_domain(src, root / "domains", "code", str(model), seq_len,
                       PrepOptions(progress=False, workers=0, fractions=SplitFractions(val=0.0, test=0.05)))
    return model, domain


def token_rows(domain: Path):
    """The domain's train split as one [samples, seq_len] int64 array: what the peers of Odyssey read."""
    import numpy as np

    from data_prep.shards import TOKENS, open_split

    ds = open_split(domain / "train")
    return np.stack([ds[i][TOKENS] for i in range(ds.num_samples)]).astype(np.int64)
