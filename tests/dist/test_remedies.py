"""The remedies a study's variants try, on 2 real ZeRO-3 ranks in one run: replay (a second stream mixed stratified:
exactly its share of every global batch, in the ledger), token-selective loss (loss.exclude_categories: label -100 on
exactly the target positions of those categories, seen in every training forward's batch), and the WSD schedule. A
run halted and resumed gives the uninterrupted run's losses and learning rates, step by step."""
import json

import numpy as np
import pytest

from tests.dist.helpers import client_and_run, history, mixed_config, run, run_wrapped

pytestmark = pytest.mark.slow
EXCLUDED = ["function_words", "punctuation"]


def test_replay_selective_loss_and_wsd_resume_exactly(assets, tmp_path):
    from transformers import AutoTokenizer

    from analysis.tokenstats import CATEGORIES, Vocab
    from data_prep.manifest import read_manifest
    from trainer.ledger import read

    cfg = mixed_config(assets, tmp_path / "r.yaml", data_extra="  mixing: stratified\n", rest=f"""
optim: {{lr: 3.0e-3, warmup_steps: 1, schedule: wsd, decay_fraction: 0.5}}
loss: {{exclude_categories: {EXCLUDED}}}
run: {{out_dir: {tmp_path}, name: straight, max_steps: 4}}
eval: {{interval: 0, max_samples: 4, token_stats: false}}
checkpoint: {{interval: 2}}
tracking: {{experiment: test}}
""")
    record = tmp_path / "batches"
    record.mkdir()
    run_wrapped(cfg, env={"TEST_RECORD_BATCHES": str(record)})

    # replay: one sample of every global batch of 4 comes from the second stream (ids after the first stream's)
    n_prose = read_manifest(assets["domains"] / "prose")["splits"]["train"]["samples"]
    records = np.concatenate(list(read(tmp_path / "straight").values()))
    for step in range(1, 5):
        ids = records["sample_id"][records["step"] == step]
        assert len(ids) == 4 and int((ids >= n_prose).sum()) == 1, (step, ids)

    # selective loss: -100 exactly where the target's category is excluded, the token id everywhere else
    tok = AutoTokenizer.from_pretrained(assets["model"])
    excluded = np.isin(Vocab.from_tokenizer(tok).category, [CATEGORIES.index(c) for c in EXCLUDED])
    for rank in (0, 1):
        seen = json.loads((record / f"batches-rank{rank}.json").read_text())
        assert len(seen) == 4
        for batch in seen:
            ids, labels = np.array(batch["input_ids"]), np.array(batch["labels"])
            assert excluded[ids].any() and (~excluded[ids]).any()
            assert (labels[excluded[ids]] == -100).all()
            assert (labels[~excluded[ids]] == ids[~excluded[ids]]).all()

    # halted at step 2, resumed: the same losses and learning rates (WSD: the peak, then the decay in steps 3-4)
    run(cfg, "run.name=halted", "run.halt_at_step=2")
    run(cfg, "run.name=halted", "--resume", "auto")
    client, [straight] = client_and_run(tmp_path / "straight")
    client_h, [halted] = client_and_run(tmp_path / "halted")
    for key in ("train/loss", "train/lr"):
        a, b = history(client, straight.info.run_id, key), history(client_h, halted.info.run_id, key)
        assert sorted(a) == sorted(b) == [1, 2, 3, 4] and b == pytest.approx(a, rel=1e-5), key
    lr = history(client, straight.info.run_id, "train/lr")
    assert lr[2] == pytest.approx(3.0e-3) and lr[3] < lr[2] and lr[4] < lr[3]
