"""Every per-token and per-vocab-id statistic Odyssey logs (2-rank ZeRO-3 run, uneven eval split) equals an independent
recomputation to 1e-4: a plain single-process HF forward of the base model and of the exported final checkpoint,
summed with plain Python."""
import json
from collections import defaultdict

import numpy as np
import pandas as pd
import pytest
import torch

from tests.dist.helpers import client_and_run, history, run
from tests.cli import odyssey

pytestmark = pytest.mark.slow
N_EVAL = 9  # odd: one rank pads


def plain_token_losses(model_dir, tokens):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(input_ids=torch.from_numpy(tokens)).logits[:, :-1]
    return torch.nn.functional.cross_entropy(logits.transpose(1, 2), torch.from_numpy(tokens[:, 1:]),
                                             reduction="none").numpy()


def test_token_stats_match_independent_recomputation(assets, tmp_path):
    from data_prep.shards import TOKENS, open_split

    cfg = tmp_path / "t.yaml"
    cfg.write_text(f"""
model: {{path: {assets['model']}}}
data: {{streams: [{{name: prose, path: {assets['domains'] / 'prose'}}}], micro_batch: 2}}
optim: {{lr: 5.0e-3}}
run: {{out_dir: {tmp_path}, name: t, max_steps: 5}}
eval: {{interval: 0, max_samples: {N_EVAL}, top_k: 5}}
tracking: {{experiment: test}}
""")
    run(cfg)
    r = odyssey(["export", str(tmp_path / "t"), str(tmp_path / "hf")])
    assert r.returncode == 0, r.stderr
    ds = open_split(assets["domains"] / "prose" / "test")
    tokens = np.stack([ds[i][TOKENS] for i in range(N_EVAL)]).astype(np.int64)
    base = plain_token_losses(assets["model"], tokens)
    cur = plain_token_losses(tmp_path / "hf", tokens)
    targets = tokens[:, 1:]

    # the cached step-0 per-token losses
    cached = np.load(tmp_path / "t" / "baseline" / "prose.npy")
    assert cached.shape == base.shape
    np.testing.assert_allclose(cached, base, atol=1e-4)

    # per vocabulary id, summed by hand
    count, bsum, csum = defaultdict(int), defaultdict(float), defaultdict(float)
    for t, b, c in zip(targets.ravel().tolist(), base.ravel().tolist(), cur.ravel().tolist()):
        count[t] += 1
        bsum[t] += b
        csum[t] += c
    table = pd.read_parquet(tmp_path / "t" / "tokens" / "prose" / "step_5.parquet").set_index("id")
    assert sorted(table.index) == sorted(count)
    for t in count:
        row = table.loc[t]
        assert row["count"] == count[t]
        assert row["mean_base_loss"] == pytest.approx(bsum[t] / count[t], abs=1e-4)
        assert row["mean_loss"] == pytest.approx(csum[t] / count[t], abs=1e-4)
        assert row["delta_sum"] == pytest.approx(csum[t] - bsum[t], abs=1e-4)

    # scalars logged to MLflow: top-k share and category shares
    total = sum(csum[t] - bsum[t] for t in count)
    deltas = sorted(((csum[t] - bsum[t]) for t in count), reverse=total >= 0)
    top = [d for d in deltas[:5] if (d > 0 if total >= 0 else d < 0)]
    by_cat = defaultdict(float)
    for t in count:
        by_cat[table.loc[t, "category"]] += csum[t] - bsum[t]
    client, runs = client_and_run(tmp_path / "t")
    rid = runs[0].info.run_id
    assert history(client, rid, "tokens/prose/topk_share")[5] == pytest.approx(sum(top) / total, abs=1e-4)
    for cat, d in by_cat.items():
        assert history(client, rid, f"tokens/prose/cat/{cat}_share")[5] == pytest.approx(d / total, abs=1e-4)
    assert history(client, rid, "eval/prose/loss")[5] == pytest.approx(cur.mean(), abs=1e-5)
    summary = json.loads((tmp_path / "t" / "tokens" / "prose" / "step_5.json").read_text())
    assert summary["tokens"] == targets.size
    arts = {a.path for a in client.list_artifacts(rid, "tokens/prose")}
    assert {"tokens/prose/step_5.parquet", "tokens/prose/step_5.png", "tokens/prose/step_5.json"} <= arts
    assert runs[0].data.tags["baseline.prose.tokens"] == str(targets.size)

    # transitions: each position low or high against the median of the base losses, under the base model and now
    tau = float(np.median(cached))
    assert history(client, rid, "tokens/prose/transition_threshold")[5] == pytest.approx(tau, abs=1e-6)
    near = int((np.abs(cur - tau) < 1e-3).sum())  # a position this close may fall on either side of tau
    classes = defaultdict(list)
    for b, c in zip(cached.ravel().tolist(), cur.ravel().tolist()):
        classes[("l" if b <= tau else "h") + ("l" if c <= tau else "h")].append(c - b)
    for cls in ("ll", "lh", "hl", "hh"):
        share = history(client, rid, f"tokens/prose/{cls}_share")[5]
        assert share == pytest.approx(len(classes[cls]) / targets.size, abs=near / targets.size + 1e-9), cls
        if not near:
            assert history(client, rid, f"tokens/prose/{cls}_dloss_share")[5] == pytest.approx(
                sum(classes[cls]) / total, abs=1e-4), cls
    assert "tokens/prose/step_5_low_to_high.md" in arts
    # the stability gap over the evals at steps 0 and 5
    ratio = history(client, rid, "eval/prose/ppl_ratio")
    assert history(client, rid, "stability/prose/depth")[5] == pytest.approx(max(0.0, max(ratio.values()) - 1))
    assert history(client, rid, "stability/prose/final_ratio")[5] == pytest.approx(ratio[5])
