"""The architecture families of the paper's study, tiny and random-init, built from their configs: GPT-2 and OLMo-2;
Llama (with grouped-query attention) is what the other tests train. Each trains under 2-rank ZeRO-3, evaluates, halts
with a checkpoint at step 1, resumes to step 2, and exports to a HF folder that scores the test split as the engine
did. OLMo-2 runs with `deepspeed.stage: auto`, which picks ZeRO-2 for it (the other tests run ZeRO-3)."""

import numpy as np
import pytest

from tests.dist.helpers import client_and_run, history, run
from tests.cli import odyssey

pytestmark = pytest.mark.slow

TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=128)


def model_config(arch: str, vocab: int):
    from transformers import GPT2Config, LlamaConfig, Olmo2Config

    if arch == "gpt2":
        return GPT2Config(vocab_size=vocab, n_positions=128, n_embd=64, n_layer=2, n_head=4)
    if arch == "llama":
        return LlamaConfig(vocab_size=vocab, num_key_value_heads=2, tie_word_embeddings=False, **TINY)
    return Olmo2Config(vocab_size=vocab, **TINY)


# GPT-2 also runs with eager attention and activation checkpointing, and stops by tokens: 200 tokens over
# 2 ranks x 1 x 64 tokens per step is 1.6 steps, rounded up to 2
EXTRA = {"gpt2": ("model: {{path: {model}, attn_impl: eager, activation_checkpointing: true}}",
                  "run: {{out_dir: {out}, name: r, max_tokens: 200, halt_at_step: 1}}"),
         "olmo2": ("model: {{path: {model}}}\ndeepspeed: {{stage: auto}}",
                   "run: {{out_dir: {out}, name: r, max_steps: 2, halt_at_step: 1}}"),
         "default": ("model: {{path: {model}}}", "run: {{out_dir: {out}, name: r, max_steps: 2, halt_at_step: 1}}")}


# Llama is not in the list only because every other multi-process test trains, resumes and exports it
@pytest.mark.parametrize("arch", ["gpt2", "olmo2"])
def test_architecture_trains_resumes_and_exports(arch, assets, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from data_prep.shards import TOKENS, open_split

    tok = AutoTokenizer.from_pretrained(assets["model"])
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(model_config(arch, len(tok))).save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    model_line, run_line = EXTRA.get(arch, EXTRA["default"])
    cfg = tmp_path / "c.yaml"
    cfg.write_text(model_line.format(model=tmp_path / "model") + "\n" + run_line.format(out=tmp_path) + "\n"
                   f"data: {{streams: [{{name: prose, path: {assets['domains'] / 'prose'}}}]}}\n"
                   "optim: {lr: 1.0e-3}\neval: {interval: 1, max_samples: 4}\ncheckpoint: {interval: 1}\n"
                   "tracking: {experiment: test}\n")
    first = run(cfg).stdout
    assert "halted at step 1" in first
    assert ("ZeRO-2 (deepspeed.stage auto: ZeRO-2 model states" in first) == (arch == "olmo2"), first[-3000:]
    assert "loss: chunked linear cross-entropy" in first
    assert "done: 2 steps" in run(cfg, "--resume", "auto", "run.halt_at_step=null").stdout
    client, runs = client_and_run(tmp_path / "r")
    evals = history(client, runs[0].info.run_id, "eval/prose/loss")
    assert sorted(evals) == [0, 1, 2] and all(np.isfinite(list(evals.values())))
    assert sorted(history(client, runs[0].info.run_id, "train/loss")) == [1, 2]

    r = odyssey(["export", str(tmp_path / "r"), str(tmp_path / "hf")])
    assert r.returncode == 0, r.stderr[-3000:]
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    assert type(model).__name__.lower().startswith(arch)
    ds = open_split(assets["domains"] / "prose" / "test")
    tokens = torch.from_numpy(np.stack([ds[i][TOKENS] for i in range(4)]).astype(np.int64))
    with torch.no_grad():
        logits = model(input_ids=tokens).logits[:, :-1]
        loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2), tokens[:, 1:]).item()
    assert loss == pytest.approx(evals[2], abs=1e-4)
