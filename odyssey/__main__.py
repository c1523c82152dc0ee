"""`python -m odyssey`. That put the working directory first on sys.path, where a user's folder named like one of our
packages (a study's `study/` output, an `analysis/` folder) would shadow it: drop it, as `python -P` would, and pass
PYTHONSAFEPATH on so every process this one starts (deepspeed's ranks, a study's runs) does the same."""
import os
import sys

if not sys.flags.safe_path and sys.path and os.path.abspath(sys.path[0] or ".") == os.getcwd():
    sys.path.pop(0)
os.environ.setdefault("PYTHONSAFEPATH", "1")

from odyssey.cli import console  # noqa: E402

console()
