"""A full disk at save time, on a real filesystem of its own (a small tmpfs under the run folder): the save that
does not fit ends the job with one line and a non-zero exit, nothing partial is left, and the previous checkpoint
is intact and loads (export verifies its checksums and consolidates it). A disk that another job fills between two
saves ends a 2-rank job at its next write (eval's token tables) with one line on every rank, and --resume auto
finishes the run once space is freed, every metric point once. The writes themselves leave nothing torn. A run
folder that one rank cannot see (local to its node) is refused at start."""
import os
import re
import subprocess
import sys
import tempfile

import numpy as np
import pytest

from data_prep.disk import DiskFull, append, write_atomic
from tests.dist.helpers import ROOT, client_and_run, run_wrapped, wrapped
from tests.cli import odyssey
from trainer.journal import read_records
from trainer.ledger import read as read_ledger

pytestmark = pytest.mark.slow


@pytest.fixture
def small_disk(tmp_path):
    mounts = []

    def mount(path, size_kib: int):
        path.mkdir(parents=True)
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(path)],
                           capture_output=True, text=True)
        if r.returncode:
            pytest.skip(f"cannot mount a tmpfs here (needs root): {r.stderr.strip()}")
        mounts.append(path)
        return path

    yield mount
    for path in mounts:
        subprocess.run(["umount", "-l", str(path)], check=False)


def config(tmp_path, assets, name):
    cfg = tmp_path / f"{name}.yaml"
    cfg.write_text(f"""
model: {{path: {assets['model']}}}
data: {{streams: [{{name: prose, path: {assets['domains'] / 'prose'}}}], micro_batch: 2}}
run: {{out_dir: {tmp_path}, name: {name}, max_steps: 6}}
eval: {{interval: 6, max_samples: 4}}
checkpoint: {{interval: 2}}
tracking: {{experiment: test}}
""")
    return cfg


def train(cfg):
    return subprocess.run([sys.executable, "-m", "odyssey", "train", str(cfg)], capture_output=True, text=True,
                          timeout=600)


def errors(r):
    return [line for line in r.stderr.splitlines() if line.startswith("odyssey: error")]


def test_no_room_for_the_next_checkpoint_keeps_the_last_one(tmp_path, assets, small_disk):
    ckpts = small_disk(tmp_path / "fills" / "checkpoints", 2600)  # one checkpoint of the tiny model is ~1.7 MiB
    r = train(config(tmp_path, assets, "fills"))
    assert r.returncode == 2 and len(errors(r)) == 1, r.stdout[-2000:] + r.stderr[-3000:]
    assert f"no room to save step 4 in {ckpts}" in errors(r)[0] and "step_00000002" in errors(r)[0]
    assert (ckpts / "latest").read_text() == "step_00000002"
    assert [p.name for p in ckpts.glob("step_*")] == ["step_00000002"]
    r = odyssey(["export", str(tmp_path / "fills"), str(tmp_path / "hf")])
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "hf" / "config.json").is_file()


def test_a_write_that_fails_on_a_full_disk_leaves_nothing_partial(tmp_path, assets, small_disk):
    ckpts = small_disk(tmp_path / "tiny" / "checkpoints", 1024)  # smaller than one checkpoint
    r = train(config(tmp_path, assets, "tiny"))
    assert r.returncode == 2 and len(errors(r)) == 1, r.stdout[-2000:] + r.stderr[-3000:]
    line = errors(r)[0]
    assert f"saving {ckpts / 'step_00000002'} failed on rank 0: a write failed, the disk is probably full" in line \
        or "No space left on device" in line, line
    assert "MiB left" in line, line
    assert "Traceback" not in r.stderr
    assert not list(ckpts.glob("step_*")) and not (ckpts / "latest").exists()
    print(line)


def test_a_run_folder_local_to_each_node_is_refused(tmp_path, assets, small_disk):
    small_disk(tmp_path / "probe", 64)  # only to skip where mounts are not allowed (not root)
    cfg = config(tmp_path, assets, "local")
    (tmp_path / "local").mkdir()
    r = run_wrapped(cfg, env={"TEST_NODE_LOCAL": str(tmp_path / "local")}, expect=2)
    line = [x for x in r.stderr.splitlines() if "odyssey: error" in x]
    assert len(line) == 1 and f"run.out_dir {tmp_path} is not shared: rank 1 cannot see" in line[0], r.stderr[-3000:]


def fill(folder) -> int:
    """What another job on the same filesystem does: write until ENOSPC. Returns the bytes written."""
    fd, n = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT), 0
    try:
        while True:
            n += os.write(fd, b"\0" * 65536)
    except OSError as err:
        assert err.errno == 28, err
    finally:
        os.close(fd)
    return n


def test_writes_on_a_full_disk_are_one_line_and_leave_nothing_torn(tmp_path, small_disk):
    disk = small_disk(tmp_path / "disk", 256)
    write_atomic(disk / "table.json", "old")
    append(disk / "ledger.bin", b"whole record")
    fill(disk)
    with pytest.raises(DiskFull) as err:
        write_atomic(disk / "table.json", "x" * 100_000)
    assert str(err.value).startswith(f"no space left writing {disk / 'table.json'} (0.0 MiB free on its filesystem)")
    assert (disk / "table.json").read_text() == "old" and sorted(p.name for p in disk.iterdir()) == [
        "filler", "ledger.bin", "table.json"]  # no temp file left
    with pytest.raises(DiskFull, match=f"writing {disk / 'ledger.bin'} "):
        append(disk / "ledger.bin", b"r" * 100_000)  # part of it fits the file's last page
    assert (disk / "ledger.bin").read_bytes() == b"whole record"


def test_each_writer_of_a_run_names_its_file(tmp_path, small_disk):
    """The run's own writers on a full disk: the baseline cache, the curves, the ledger, the journal."""
    from analysis.baseline import BaselineCache
    from analysis.plots import degradation_curves
    from trainer.journal import Journal
    from trainer.ledger import Ledger

    run = small_disk(tmp_path / "run", 256)
    ledger, journal = Ledger(run, 1), Journal(run / "mlflow", "train")
    journal.append({"op": "tag"})
    fill(run)
    history = [{"step": 0, "tokens_seen": 0, "ppl": {"prose": 9.0}, "ppl_ratio": {"prose": 1.0}}]
    ledger.record(1, np.arange(600))
    for write, path in ((lambda: BaselineCache(run, "m").save("prose", np.ones((4, 8)), np.ones((4, 8))),
                         run / "baseline" / "prose.npy"),
                        (lambda: degradation_curves(history, ["prose"], run / "curves" / "degradation.png"),
                         run / "curves" / "degradation.png"),
                        (ledger.flush, run / "ledger" / "rank1.bin"),
                        (lambda: journal.append({"op": "tag", "value": "x" * 5000}), journal.path)):
        with pytest.raises(DiskFull) as err:
            write()
        assert str(err.value).startswith(f"no space left writing {path} (0.0 MiB free on its filesystem); "), err
    assert [r["seq"] for r in read_records(journal.path)] == [1] and journal.path.read_text().endswith("}\n")
    assert not list(run.rglob(".*tmp*")) and (run / "ledger" / "rank1.bin").stat().st_size == 0  # cut back


def fill_after_step(c, env, step: int, disk) -> tuple[int, str, str, str]:
    """Start the job; once it logged `step`, fill its disk. Returns (exit code, stdout, stderr, what both printed
    after the fill)."""
    with tempfile.TemporaryFile() as err:  # not a pipe: a rank blocked on a full pipe would hold the other
        p = subprocess.Popen(c, stdout=subprocess.PIPE, stderr=err, text=True, env=env, cwd=ROOT)
        before, err_at = [], None
        for line in p.stdout:
            before.append(line)
            if re.search(rf"step {step}/\d+ loss", line):
                err_at = os.fstat(err.fileno()).st_size
                fill(disk)
                break
        after = p.communicate(timeout=600)[0]
        err.seek(0)
        stderr = err.read()
    assert err_at is not None, "".join(before)[-3000:] + stderr.decode(errors="replace")[-3000:]
    return p.returncode, "".join(before) + after, stderr.decode(errors="replace"), \
        after + stderr[err_at:].decode(errors="replace")


def test_a_disk_filled_between_saves_stops_every_rank_with_one_line(tmp_path, assets, small_disk):
    from trainer import checkpoint

    disk = small_disk(tmp_path / "disk", 16 * 1024)  # room for the run, its store and two checkpoints
    cfg = tmp_path / "full.yaml"
    cfg.write_text(f"""
model: {{path: {assets['model']}}}
data: {{streams: [{{name: prose, path: {assets['domains'] / 'prose'}}}], micro_batch: 2}}
run: {{out_dir: {disk}, name: full, max_steps: 8}}
eval: {{interval: 3, max_samples: 4}}
checkpoint: {{interval: 4}}
tracking: {{experiment: test}}
""")
    c, env = wrapped(cfg)
    code, out, stderr, after = fill_after_step(c, env, 5, disk)  # saves at 4 and 8, an eval at 6
    assert code == 2, out[-3000:] + stderr[-3000:]
    errors = [line for line in stderr.splitlines() if line.startswith("odyssey: error:")]
    assert len(errors) == 1, stderr[-3000:]
    run_dir = re.escape(str(disk / "full"))
    assert re.match(rf"odyssey: error: no space left writing {run_dir}/\S+ \([\d.]+ MiB free on its filesystem\); "
                    rf"free space and run it again \(a training run: --resume auto", errors[0]), errors
    for text in (out, stderr):
        assert "Traceback" not in text and "connection closed" not in text.lower(), text[-3000:]
    assert len(after.splitlines()) < 30, after
    ckpts = disk / "full" / "checkpoints"
    assert (ckpts / "latest").read_text() == "step_00000004"
    assert [p.name for p in ckpts.glob("step_*")] == ["step_00000004"]
    checkpoint.verify(ckpts, "step_00000004", world=2)  # every file there, sizes and checksums as saved

    (disk / "filler").unlink()
    r = run_wrapped(cfg, "--resume", "auto")
    assert f"resumed from {ckpts / 'step_00000004'} at step 4" in r.stdout and "done: 8 steps" in r.stdout
    client, [run] = client_and_run(disk / "full")
    assert run.info.status == "FINISHED"
    for key in run.data.metrics:
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, key))
        assert len(steps) == len(set(steps)), f"{key}: a step logged twice: {steps}"
        if key.startswith("eval/"):
            assert steps == [0, 3, 6, 8], key
        elif key.startswith("tokens/"):
            assert steps == [3, 6, 8], key
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "train/loss")) == list(range(1, 9))
    for records in read_ledger(disk / "full").values():  # steps 5-8 once, though the first attempt ran 5 and 6
        assert sorted(records["step"].tolist()) == sorted(list(range(1, 9)) * 2)
