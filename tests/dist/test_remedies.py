"""The remedies a study's variants try, on 2 real ZeRO-3 ranks in one run: replay (a second stream mixed stratified:
exactly its share of every global batch, in the ledger), token-selective loss by category (loss.exclude_categories:
label -100 on exactly the target positions of those categories, seen in every training forward's batch), Rho-1-style
selection (loss.select_top, over the targets left), and the WSD schedule.

For the selection, `odyssey score` stores the base model's per-token losses with the shards (equal to a plain forward
of the base model, row by row); training without them, or with stale ones, is one line before any rank starts; in
every training forward the base losses are exactly the stored rows of the batch's samples, exactly the top fraction
by excess loss is kept, and the step's loss is the mean over the kept tokens. A run halted and resumed gives the
uninterrupted run's losses and learning rates, step by step."""
import json
import shutil

import numpy as np
import pytest
import torch

from tests.cli import odyssey
from tests.dist.helpers import client_and_run, free_port, history, mixed_config, run, run_wrapped

pytestmark = pytest.mark.slow
EXCLUDED = ["function_words", "punctuation"]
FRACTION = 0.4


def base_losses(model, rows: np.ndarray) -> np.ndarray:
    import torch.nn.functional as F

    ids = torch.from_numpy(rows.astype(np.int64))
    with torch.no_grad():
        logits = model(input_ids=ids).logits[:, :-1].float()
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1),
                           reduction="none").view(len(rows), -1).numpy()


def score(assets, cfg, domains) -> tuple[dict, dict, dict]:
    """`odyssey score` on 2 ranks: (score files, stored losses, every train row) per stream, checked against a plain
    forward of the base model on rows of both ranks' shares."""
    from transformers import AutoModelForCausalLM

    from analysis.baseline import model_hash
    from data_prep.shards import TOKENS, open_split

    unscored = odyssey(["train", cfg, "--nproc", "2"])
    assert unscored.returncode == 2 and "loss.select_top: stream 'prose' has no base-model losses" in unscored.stderr
    assert "run `odyssey score CONFIG`" in unscored.stderr
    scored = odyssey(["score", cfg, "--nproc", "2", "--master-port", free_port()])
    assert scored.returncode == 0, scored.stdout[-3000:] + scored.stderr[-3000:]
    files = {n: d / "train" / "base_losses" / f"{model_hash(assets['model'])}.npy" for n, d in domains.items()}
    model = AutoModelForCausalLM.from_pretrained(assets["model"]).eval()
    stored, rows = {}, {}
    for name, path in files.items():
        stored[name] = np.load(path)
        split = open_split(local=str(domains[name] / "train"), remote=None)
        rows[name] = np.stack([split[i][TOKENS] for i in range(split.num_samples)])
        assert stored[name].dtype == np.float16 and stored[name].shape == (len(rows[name]), rows[name].shape[1] - 1)
        some = [0, 1, len(rows[name]) // 2, len(rows[name]) - 1]
        want = base_losses(model, rows[name][some])
        assert np.allclose(stored[name][some].astype(np.float32), want, rtol=2e-3, atol=2e-3), name
    again = odyssey(["score", cfg])  # one process: nothing to do
    assert again.returncode == 0 and again.stdout.count("already current") == 2
    return files, stored, rows


def test_replay_selective_loss_rho1_and_wsd_resume_exactly(assets, tmp_path):
    from transformers import AutoTokenizer

    from analysis.tokenstats import CATEGORIES, Vocab
    from data_prep.manifest import read_manifest
    from trainer.ledger import read

    domains = {n: shutil.copytree(assets["domains"] / n, tmp_path / "domains" / n) for n in ("prose", "code")}
    cfg = mixed_config({**assets, "domains": tmp_path / "domains"}, tmp_path / "r.yaml",
                       data_extra="  mixing: stratified\n", rest=f"""
optim: {{lr: 3.0e-3, warmup_steps: 1, schedule: wsd, decay_fraction: 0.5}}
loss: {{exclude_categories: {EXCLUDED}, select_top: {FRACTION}}}
run: {{out_dir: {tmp_path}, name: straight, max_steps: 4}}
eval: {{interval: 0, max_samples: 4, token_stats: false}}
checkpoint: {{interval: 2}}
tracking: {{experiment: test}}
""")
    files, stored, rows = score(assets, cfg, domains)
    record = tmp_path / "batches"
    record.mkdir()
    run_wrapped(cfg, env={"TEST_RECORD_BATCHES": str(record), "TEST_RECORD_SELECTION": str(record)})

    # replay: one sample of every global batch of 4 comes from the second stream (ids after the first stream's)
    n_prose = read_manifest(domains["prose"])["splits"]["train"]["samples"]
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

    # Rho-1 over the targets left: the stored base rows of exactly the batch's samples, the top fraction by excess
    client, [straight] = client_and_run(tmp_path / "straight")
    train_loss = history(client, straight.info.run_id, "train/loss")
    by_tokens = {r.tobytes(): (n, i) for n in rows for i, r in enumerate(rows[n])}
    kept_means = np.zeros((2, 4))
    for rank in (0, 1):
        seen = json.loads((record / f"selection-rank{rank}.json").read_text())
        assert len(seen) == 4  # one forward a step
        for step, s in enumerate(seen):
            ids = np.array(s["input_ids"])
            base = np.array(s["base"], dtype=np.float32).reshape(len(ids), -1)  # the head sees them flat
            for row, b in zip(ids, base):
                name, i = by_tokens[row.astype(rows["prose"].dtype).tobytes()]
                assert np.array_equal(b, stored[name][i].astype(np.float32))
            now, scored_at, keep = (np.array(s[k]).reshape(-1) for k in ("now", "scored", "keep"))
            assert np.array_equal(scored_at, ~excluded[ids[:, 1:]].reshape(-1))  # excluded targets never compete
            k = int(np.ceil(scored_at.sum() * FRACTION))
            excess = np.where(scored_at, now - base.reshape(-1), -np.inf)
            assert keep.sum() == k and excess[keep].min() >= excess[~keep].max()
            kept_means[rank, step] = now[keep].mean()
    # the step's loss: the mean over the kept tokens (each rank's, averaged over the ranks)
    assert [train_loss[s] for s in (1, 2, 3, 4)] == pytest.approx(kept_means.mean(axis=0).tolist(), rel=1e-4)

    meta = files["prose"].with_suffix(".json")
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "split_hash": "0" * 16}))
    stale = odyssey(["train", cfg, "run.name=stale"])
    assert stale.returncode == 2 and "stream 'prose': its base-model losses" in stale.stderr
    assert "re-prepared; run `odyssey score CONFIG` again" in stale.stderr
    rescored = odyssey(["score", cfg])  # one process, no ZeRO-3: prose scored again to the same losses, code kept
    assert rescored.stdout.count("already current") == 1 and "prose: base-model losses of" in rescored.stdout
    assert np.allclose(np.load(files["prose"]), stored["prose"], atol=2e-3)

    # halted at step 2, resumed: the same losses and learning rates (WSD: the peak, then the decay in steps 3-4)
    run(cfg, "run.name=halted", "run.halt_at_step=2")
    run(cfg, "run.name=halted", "--resume", "auto")
    client_h, [halted] = client_and_run(tmp_path / "halted")
    for key in ("train/loss", "train/lr"):
        a, b = history(client, straight.info.run_id, key), history(client_h, halted.info.run_id, key)
        assert sorted(a) == sorted(b) == [1, 2, 3, 4] and b == pytest.approx(a, rel=1e-5), key
    lr = history(client, straight.info.run_id, "train/lr")
    assert lr[2] == pytest.approx(3.0e-3) and lr[3] < lr[2] and lr[4] < lr[3]
