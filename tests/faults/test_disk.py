"""A full disk at save time, on a real filesystem of its own (a small tmpfs under the run folder): the save that
does not fit ends the job with one line and a non-zero exit, nothing partial is left, and the previous checkpoint
is intact and loads (export verifies its checksums and consolidates it). A run folder that one rank cannot see (local
to its node) is refused at start."""
import subprocess
import sys

import pytest

from tests.dist.helpers import run_wrapped

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
    r = subprocess.run([sys.executable, "-m", "odyssey", "export", str(tmp_path / "fills"), str(tmp_path / "hf")],
                       capture_output=True, text=True, timeout=600)
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
