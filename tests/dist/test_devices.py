"""Device discipline on 2 real ZeRO-3 ranks: every tensor that the loop, the eval, the stop check and the save hand
to a collective sits on the engine's device (NCCL takes device tensors only; gloo would take anything, so CPU runs alone
would never notice). Recorded by a wrapper over torch.distributed installed from the test's side. The same run shows
that ZeRO-3 keeps each training forward's gathered parameters for its backward (trainer/engine.py: retrace_zero3)."""
import json

import pytest

from tests.dist.helpers import run_wrapped

pytestmark = pytest.mark.slow


def test_collectives_get_tensors_on_the_engine_device(assets, tmp_path):
    cfg = tmp_path / "train.yaml"
    cfg.write_text(f"""
model: {{path: {assets['model']}}}
data: {{streams: [{{name: prose, path: {assets['domains'] / 'prose'}}}], micro_batch: 2}}
optim: {{accumulation: 2}}
run: {{out_dir: {tmp_path}, name: devices, max_steps: 3}}
eval: {{interval: 2, max_samples: 6, domains: [{{name: code, path: {assets['domains'] / 'code'}}}]}}
checkpoint: {{interval: 2}}
tracking: {{experiment: test}}
""")
    record = tmp_path / "collectives"
    record.mkdir()
    r = run_wrapped(cfg, env={"TEST_RECORD_COLLECTIVES": str(record), "TEST_RECORD_GATHERED": str(record)})
    assert "done: 3 steps" in r.stdout
    for rank in (0, 1):
        # ZeRO-3 keeps what a training forward gathered for its backward (no second all-gather per parameter). The
        # first micro-batch after each eval (steps 0 and 2) records the fetch trace anew and holds less
        gathered = json.loads((record / f"gathered-rank{rank}.json").read_text())
        assert len(gathered) == 3 * 2, gathered
        assert [held == total for held, total in gathered] == [False, True, True, True, False, True], gathered
    for rank in (0, 1):
        seen = json.loads((record / f"rank{rank}.json").read_text())
        assert len(seen["engine_device"]) == 1
        device = seen["engine_device"][0]
        sites = {}
        for rec in seen["records"]:
            sites.setdefault(rec["site"], set()).add(rec["device"])
        # the step's one collective (losses, bad-loss count, stop flag): once per step, not per micro-batch
        steps = [rec for rec in seen["records"] if rec["site"] == "step_stats.py:agree"]
        assert len(steps) == 3
        # eval: per-domain sums to every rank, then per-token targets and losses of both domains to rank 0 only (the
        # one that summarizes them; test_tokenstats_correct checks their values), at steps 0, 2 and 3
        evals = [rec["op"] for rec in seen["records"] if rec["site"] == "evaluate.py:evaluate"]
        assert sorted(evals) == ["all_reduce"] * 3 + ["reduce"] * 3 * 2 * 2, evals
        # a save: all ranks agree whether the disk has room, at steps 2 and 3
        assert len([rec for rec in seen["records"] if rec["site"] == "checkpoint.py:check_room"]) == 2
        # at start: every rank sees the run folder rank 0 writes (a broadcast, then an all_reduce)
        assert len([rec for rec in seen["records"] if rec["site"] == "checkpoint.py:check_shared"]) == 2
        # the ranks learn whether any rank failed (one all_reduce each; a broadcast only if one did): the shard
        # checks, rank 0's probe of the run folder and the first writes at start, each eval's writes (steps 0, 2, 3),
        # each rank's ledger before each save (steps 2, 3), the curves at the end, and rank 0's last writes (its
        # tracking, the FINISHED mark)
        assert [rec["op"] for rec in seen["records"] if rec["site"] == "dist.py:first_problem"] == ["all_reduce"] * 10
        assert set(sites) == {"step_stats.py:agree", "evaluate.py:evaluate", "checkpoint.py:check_room",
                              "checkpoint.py:check_shared", "dist.py:first_problem"}, sites
        assert all(devices == {device} for devices in sites.values()), (device, sites)
