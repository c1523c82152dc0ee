"""A package of another distribution (or a folder on PYTHONPATH) named like one of ours: `odyssey` stops at start
with one line naming it and where it lives, instead of importing it."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ODYSSEY = Path(sys.executable).with_name("odyssey")


@pytest.mark.parametrize("command", [[str(ODYSSEY), "--help"], [sys.executable, "-m", "odyssey", "--help"]],
                         ids=["console-script", "python-m"])
def test_a_foreign_trainer_earlier_on_the_path_is_named(tmp_path, command):
    fake = tmp_path / "elsewhere" / "trainer"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "model.py").write_text("raise RuntimeError('a foreign trainer was imported')\n")  # as Coqui's has
    env = {**os.environ, "PYTHONPATH": str(fake.parent)}
    r = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-2000:]
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("odyssey: error: package 'trainer' is shadowed by "), \
        r.stderr
    assert str(fake) in r.stderr and "Traceback" not in r.stderr


def test_the_own_installation_passes():
    from odyssey.own_packages import stranger

    assert stranger() is None
    r = subprocess.run([str(ODYSSEY), "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "usage: odyssey" in r.stdout, r.stderr[-2000:]
