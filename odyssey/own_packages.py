"""Odyssey installs top-level packages with common names, and other distributions install the same names (Coqui's
`trainer`, a dependency of coqui-tts, even has a trainer/model.py; PyPI also has `study`, `analysis` and `launch`).
In one environment one silently overwrites the other, or an earlier folder on the path shadows it. So `odyssey`
checks, before it imports any of them, that each resolves to this installation, and stops with one line otherwise.
Standard library only: nothing of ours can be trusted to import yet."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

PACKAGES = ("data_prep", "analysis", "trainer", "study", "launch")


def stranger() -> str | None:
    """A line naming the first of our packages that does not resolve beside this `odyssey` package, or None."""
    home = Path(__file__).resolve().parent.parent
    for name in PACKAGES:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError) as err:
            return f"package '{name}' cannot be found ({err}); reinstall odyssey"
        origin = spec and (spec.origin or next(iter(spec.submodule_search_locations or []), None))
        if not origin:
            return f"package '{name}' is not installed beside odyssey ({home}); reinstall odyssey"
        where = Path(origin).resolve()
        if where.parent.parent != home:
            return (f"package '{name}' is shadowed by {where.parent} (odyssey's is in {home}): another "
                    f"distribution or a folder on PYTHONPATH uses the name; uninstall or rename it, or use a "
                    f"virtual environment of its own for odyssey")
    return None


def check_own_packages() -> None:
    """Exit 2 with one line when a package of ours is not the one installed with this `odyssey`."""
    problem = stranger()
    if problem:
        print(f"odyssey: error: {problem}", file=sys.stderr, flush=True)
        raise SystemExit(2)
