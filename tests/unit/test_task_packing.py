"""Packed task training rows (`pack: true`): whole examples in order, at most max_len tokens a row, the same tokens
and targets as unpacked rows; and attention never crosses examples: every token's loss in a packed row equals its
loss with its example run alone, under sdpa and eager attention (and differs without the mask)."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from data_prep.config import validate
from data_prep.shards import IGNORE, open_split
from data_prep.tasks import TaskCfg, prepare_task
from tests import tiny
from trainer.data import SEGMENT_IDS, batch_of, model_inputs


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("packing")
    tiny.build_tokenizer(root / "model", tiny.prose_docs(80), vocab_size=400)
    tiny.build_tiny_llama(root / "model", len(AutoTokenizer.from_pretrained(root / "model")))
    docs = tiny.prose_docs(40, seed=8)
    (root / "src.jsonl").write_text("".join(json.dumps({"input": d[:120], "output": " " + d.split()[0]}) + "\n"
                                            for d in docs))
    tree = {"name": "t", "source": str(root / "src.jsonl"), "kind": "generation", "template": "P: {input}\nA:",
            "max_len": 128, "val": 0.0, "test": 0.2}
    for pack in (False, True):
        prepare_task(validate(TaskCfg, {**tree, "pack": pack}, "task"), root / str(pack), str(root / "model"))
    return root


def rows(root, pack, split="train"):
    ds = open_split(root / str(pack) / "t" / split)
    return [ds[i] for i in range(ds.num_samples)]


def test_packed_rows_hold_whole_examples_in_order(prepared):
    plain, packed = rows(prepared, False), rows(prepared, True)
    assert len(packed) < len(plain) and all(len(r["input_ids"]) <= 128 for r in packed)
    assert max(r["segments"].max() for r in packed) >= 2
    for name in ("input_ids", "labels"):
        assert np.array_equal(np.concatenate([r[name] for r in plain]), np.concatenate([r[name] for r in packed]))
    examples = [p for r in packed for p in np.split(r["input_ids"], np.flatnonzero(np.diff(r["segments"])) + 1)]
    assert [list(e) for e in examples] == [list(r["input_ids"]) for r in plain]
    manifest = json.loads((prepared / "True" / "t" / "manifest.json").read_text())
    assert manifest["splits"]["train"]["samples"] == len(packed) and manifest["splits"]["train"]["examples"] == len(plain)
    assert len(rows(prepared, True, "test")) == len(rows(prepared, False, "test"))  # eval rows stay unpacked


def losses(model, batch):
    out = model(**batch).logits[:, :-1].float()
    return F.cross_entropy(out.transpose(1, 2), batch["labels"][:, 1:], reduction="none", ignore_index=IGNORE)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_attention_never_crosses_examples(prepared, attn):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(prepared / "model", dtype=torch.float32, attn_implementation=attn)
    model.eval()
    packed = sorted(rows(prepared, True), key=lambda r: -r["segments"].max())[:2]  # two rows, padded to one length
    batch = batch_of(packed)
    assert SEGMENT_IDS in batch
    with torch.no_grad():
        plain_causal = losses(model, {k: v for k, v in batch.items() if k != SEGMENT_IDS})
        got = losses(model, model_inputs(dict(batch), attn, torch.float32))
        for i, r in enumerate(packed):
            bounds = np.flatnonzero(np.diff(np.r_[-1, r["segments"], -2]))
            for start, end in zip(bounds[:-1], bounds[1:]):
                alone = batch_of([{"input_ids": r["input_ids"][start:end], "labels": r["labels"][start:end]}])
                want = losses(model, alone)[0]
                assert torch.allclose(got[i, start:end - 1], want, atol=1e-5), (i, start)
                assert end == len(r["input_ids"]) or got[i, end - 1] == 0  # no loss across the boundary
    later = packed[0]["segments"][1:] > 0
    assert not torch.allclose(plain_causal[0][torch.from_numpy(later)], got[0][torch.from_numpy(later)], atol=1e-3)


def test_flash_attention_gets_one_joined_row_with_restarting_positions(prepared):
    packed = sorted(rows(prepared, True), key=lambda r: -r["segments"].max())[:2]
    batch = model_inputs(batch_of(packed), "flash_attention_2", torch.bfloat16)
    n = batch["input_ids"].shape[1]
    assert "attention_mask" not in batch and all(v.shape == (1, n) for v in batch.values())
    starts = (batch["position_ids"][0] == 0).nonzero().flatten().tolist()
    lengths = [len(p) for r in packed for p in np.split(r["segments"], np.flatnonzero(np.diff(r["segments"])) + 1)]
    assert len(starts) >= len(lengths) and batch["labels"][0, starts].eq(IGNORE).all()  # no loss across a join
    with pytest.raises(Exception, match="packed task rows need sdpa, eager or flash_attention_2"):
        model_inputs(batch_of(packed), "flex_attention", torch.float32)
