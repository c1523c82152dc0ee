"""A plain (non-editable) `pip install .` works away from the source tree: the shipped DeepSpeed configs and launch
scripts come from the installed package, not from files beside a checkout."""
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("data_prep", "analysis", "trainer", "study", "odyssey", "launch", "ds_configs")


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A fresh venv with odyssey built and installed as a wheel; its dependencies come from this interpreter's
    environment through a .pth line (so nothing is downloaded), which does not carry the editable checkout."""
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "odyssey_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    src = tmp_path_factory.mktemp("src")  # a copy: pip builds in the source folder and leaves build/ there
    for name in PACKAGES:
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    r = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps",
                        "--no-build-isolation", "--no-cache-dir", str(src)], capture_output=True, text=True,
                       cwd=src, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return venv


def test_the_install_is_not_the_checkout(installed):
    r = subprocess.run([str(installed / "bin" / "python"), "-c", "import trainer, ds_configs, launch; "
                        "print(trainer.__file__, ds_configs.__file__, launch.script('slurm/train.sbatch'))"],
                       capture_output=True, text=True, cwd=installed, check=True)
    paths = r.stdout.split()
    assert all(p.startswith(str(installed)) for p in paths), paths
    assert Path(paths[2]).is_file()


def test_dry_run_with_a_named_ds_config_from_the_installed_package(installed, assets, tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"model: {{path: {assets['model']}}}\n"
                   f"data: {{streams: [{{name: prose, path: {assets['domains'] / 'prose'}}}]}}\n"
                   "deepspeed: {config: zero3_offload}\n")
    r = subprocess.run([str(installed / "bin" / "odyssey"), "train", str(cfg), "--dry-run"], capture_output=True,
                       text=True, cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "ZeRO-3, offload_optimizer, offload_param" in r.stdout, r.stdout[-2000:]
    r = subprocess.run([str(installed / "bin" / "odyssey"), "train", str(cfg), "--dry-run",
                        "deepspeed.config=zero9"], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert r.returncode == 2 and "no shipped DeepSpeed config 'zero9' (shipped: zero2, zero3, zero3_offload" in \
        r.stderr, r.stderr[-2000:]
