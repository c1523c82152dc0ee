"""Production behaviour on real 2-rank ZeRO-3 (killed ranks: tests/faults/test_kills.py): a signal saves and exits
0, export round-trips to from_pretrained, bad losses follow the policy, and broken checkpoints are refused with one
line. (Architectures other than Llama: tests/dist/test_architectures.py.)"""
import shutil
import signal
import subprocess

import numpy as np
import pytest

from tests.dist.helpers import client_and_run, cmd, history, mixed_config, run, run_wrapped
from tests.cli import odyssey

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def base(assets, tmp_path_factory):
    out = tmp_path_factory.mktemp("prod")
    cfg = out / "train.yaml"
    cfg.write_text(f"""
model: {{path: {assets['model']}}}
data: {{streams: [{{name: prose, path: {assets['domains'] / 'prose'}}}], micro_batch: 2}}
optim: {{lr: 3.0e-3, warmup_steps: 1}}
run: {{out_dir: {out}, name: straight, max_steps: 8, seed: 3}}
eval: {{interval: 4, max_samples: 8}}
checkpoint: {{interval: 2}}
tracking: {{experiment: test}}
""")
    run(cfg)
    return cfg, out


def losses(run_dir):
    client, runs = client_and_run(run_dir)
    assert len(runs) == 1
    return history(client, runs[0].info.run_id, "train/loss")


def ledger_by_step(run_dir):
    from trainer.ledger import read

    return {rank: {int(s): sorted(rec["sample_id"][rec["step"] == s].tolist()) for s in np.unique(rec["step"])}
            for rank, rec in read(run_dir).items()}


def test_ledger_covers_every_step_without_repeats(base):
    cfg, out = base
    led = ledger_by_step(out / "straight")
    assert sorted(led) == [0, 1]
    ids = []
    for rank in led:
        assert sorted(led[rank]) == list(range(1, 9))
        assert all(len(v) == 2 for v in led[rank].values())  # micro_batch 2, accumulation 1
        ids += [i for v in led[rank].values() for i in v]
    assert len(ids) == len(set(ids)) == 32, "no sample twice within the epoch"


def test_sigusr1_on_one_rank_saves_and_exits_zero(base):
    import psutil

    cfg, out = base
    p = subprocess.Popen(cmd(cfg, "run.name=signalled", "checkpoint.interval=0"), stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in p.stdout:
        lines.append(line)
        if "step 3/8" in line:
            ranks = [c for c in psutil.Process(p.pid).children(recursive=True) if "--local_rank=1" in " ".join(
                c.cmdline())]
            assert ranks, "rank 1 process not found"
            ranks[0].send_signal(signal.SIGUSR1)
    rc = p.wait(timeout=300)
    text = "".join(lines)
    assert rc == 0, text[-3000:]
    assert "by SIGUSR1" in text or "by a signal on another rank" in text
    tag = (out / "signalled" / "checkpoints" / "latest").read_text()
    step = int(tag.split("_")[1])
    assert 3 <= step < 8 and (out / "signalled" / "checkpoints" / tag / "COMPLETE").is_file()
    run(cfg, "run.name=signalled", "checkpoint.interval=0", "--resume", "auto")
    a, b = losses(out / "straight"), losses(out / "signalled")
    assert b[8] == pytest.approx(a[8], abs=1e-6)


def test_export_round_trip(base, assets, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from data_prep.shards import TOKENS, open_split

    cfg, out = base
    r = odyssey(["export", str(out / "straight"), str(tmp_path / "hf")])
    assert r.returncode == 0, r.stderr[-3000:]
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    assert AutoTokenizer.from_pretrained(tmp_path / "hf").eos_token == "<eos>"
    ds = open_split(assets["domains"] / "prose" / "test")
    tokens = torch.from_numpy(np.stack([ds[i][TOKENS] for i in range(8)]).astype(np.int64))
    with torch.no_grad():
        logits = model(input_ids=tokens).logits[:, :-1]
        loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2), tokens[:, 1:]).item()
    client, runs = client_and_run(out / "straight")
    engine_loss = history(client, runs[0].info.run_id, "eval/prose/loss")[8]
    assert loss == pytest.approx(engine_loss, abs=1e-5)
    r = odyssey(["export", str(out / "straight"), str(tmp_path / "hf")])
    assert r.returncode == 2 and "already exists" in r.stderr
    r = odyssey(["export", str(out / "straight"), str(tmp_path / "bf"), "--dtype", "bf16"])
    assert r.returncode == 0
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "bf", dtype="auto").dtype == torch.bfloat16


def test_bad_losses_skip_the_update_or_stop(base):
    """A NaN loss (3rd training forward) and a spike (x1000 at the 6th, spike_factor 10) on one rank: both ranks skip
    those updates through DeepSpeed's overflow path, so the LR schedule stays on the uninterrupted run's steps and no
    NaN reaches the weights; the ledger marks the consumed samples; with bad_loss=stop the run saves and exits 3."""
    cfg, out = base
    run_wrapped(cfg, "run.name=bad_skip", "optim.spike_factor=10", env={"TEST_LOSS_FAULTS": "3:nan,6:1000"})
    client, runs = client_and_run(out / "bad_skip")
    run_id = runs[0].info.run_id
    assert history(client, run_id, "train/skipped_steps") == {3: 1.0, 5: 2.0}
    assert runs[0].info.status == "FINISHED"
    straight_client, straight = client_and_run(out / "straight")
    assert history(client, run_id, "train/lr") == history(straight_client, straight[0].info.run_id, "train/lr")
    assert all(np.isfinite(v) for v in history(client, run_id, "train/loss").values())
    assert np.isfinite(history(client, run_id, "eval/prose/loss")[8])
    from trainer.ledger import read

    for rec in read(out / "bad_skip").values():
        assert sorted(set(rec["step"][rec["step"] < 0].tolist())) == [-5, -3]
        assert sorted(set(rec["step"][rec["step"] > 0].tolist())) == list(range(1, 9))
    r = run_wrapped(cfg, "run.name=nan_stop", "optim.bad_loss=stop", env={"TEST_LOSS_FAULTS": "3:nan"}, expect=3)
    assert "stopped at step 2 by bad loss" in r.stdout
    assert (out / "nan_stop" / "checkpoints" / "latest").read_text() == "step_00000002"


def broken_copy(out, name):
    dst = out / name
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(out / "straight", dst)
    return dst


def one_error(r):
    errors = [line for line in r.stderr.splitlines() if line.startswith("odyssey: error")]
    assert r.returncode == 2 and len(errors) == 1, r.stderr[-3000:]
    return errors[0]


def test_broken_checkpoints_are_refused(base):
    cfg, out = base
    d = broken_copy(out, "missing_shard")
    next((d / "checkpoints" / "step_00000008").glob("*zero_pp_rank_1_*optim_states.pt")).unlink()
    err = one_error(subprocess.run(cmd(cfg, "run.name=missing_shard", "run.max_steps=10", "--resume", "latest"),
                                   capture_output=True, text=True, timeout=300))
    assert "missing" in err and "zero_pp_rank_1" in err

    d = broken_copy(out, "bad_latest")
    (d / "checkpoints" / "latest").write_text("garbage\x00")
    err = one_error(subprocess.run(cmd(cfg, "run.name=bad_latest", "--resume", "latest"), capture_output=True,
                                   text=True, timeout=300))
    assert "latest names" in err

    d = broken_copy(out, "world")
    err = one_error(subprocess.run(cmd(cfg, "run.name=world", "run.max_steps=10", "--resume", "auto", nproc=None),
                                   capture_output=True, text=True, timeout=300))
    assert "saved by 2 ranks, this run has 1" in err

    d = broken_copy(out, "corrupt")  # same size, one byte flipped: only the checksum sees it (the ranks hash)
    f = next((d / "checkpoints" / "step_00000008").glob("*zero_pp_rank_1_*optim_states.pt"))
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))
    err = one_error(subprocess.run(cmd(cfg, "run.name=corrupt", "run.max_steps=10", "--resume", "auto"),
                                   capture_output=True, text=True, timeout=300))
    assert "zero_pp_rank_1_mp_rank_00_optim_states.pt does not match its checksum" in err

    d = broken_copy(out, "truncated")
    f = next((d / "checkpoints" / "step_00000008").glob("*zero_pp_rank_0_*model_states.pt"))
    f.write_bytes(f.read_bytes()[:-100])
    err = one_error(subprocess.run(cmd(cfg, "run.name=truncated", "run.max_steps=10", "--resume", "auto"),
                                   capture_output=True, text=True, timeout=300))
    assert "truncated" in err


def test_two_streams_by_proportion_and_a_stop_by_epochs(assets, tmp_path):
    """Adaptation domain + replay stream mixed 3:1; one quarter epoch of the mixture; the ledger shows both."""
    from data_prep.manifest import read_manifest
    from trainer.ledger import read

    cfg = mixed_config(assets, tmp_path / "mix.yaml", f"""run: {{out_dir: {tmp_path}, name: mix, epochs: 0.25}}
eval: {{interval: 0, max_samples: 4, token_stats: false}}
tracking: {{experiment: test}}
""")
    r = run(cfg)
    n_prose = read_manifest(assets["domains"] / "prose")["splits"]["train"]["samples"]
    ids = np.concatenate([rec["sample_id"] for rec in read(tmp_path / "mix").values()])
    steps = int(r.stdout.split("done: ")[1].split(" steps")[0])
    from streaming import Stream, StreamingDataset

    epoch = len(StreamingDataset(streams=[Stream(local=str(assets["domains"] / d / "train"), proportion=p)
                                          for d, p in (("prose", 0.75), ("code", 0.25))], batch_size=2))
    assert steps == int(0.25 * -(-epoch // 2)) // 2  # a quarter of each rank's share, 2 samples per step
    assert len(ids) == steps * 4
    prose = ids < n_prose  # streams are concatenated in config order: prose ids come first
    assert 0.65 < prose.mean() < 0.85, prose.mean()
    # 0.75 of the epoch is more than prose holds, so prose is upsampled (repeats); code is subsampled (none)
    assert len(set(ids[prose])) < prose.sum() and len(set(ids[~prose])) == (~prose).sum()
