"""Starting Odyssey's ranks on clusters: a hostfile helper, and shell scripts shipped as package data
(`deepspeed_multinode.sh`, `slurm/*.sbatch`), found from the installed package: `python -m launch slurm/train.sbatch`
prints a script's path, so `sbatch "$(python -m launch slurm/train.sbatch)" run.yaml` works from any folder."""
from __future__ import annotations

import importlib.resources
from pathlib import Path


def script(name: str = "") -> Path:
    """The path of a shipped launch script (e.g. 'slurm/train.sbatch') or folder ('slurm'; '' for launch/)."""
    path = Path(str(importlib.resources.files("launch").joinpath(name)))
    if not path.exists():
        raise FileNotFoundError(f"no launch script {name!r} in {path.parent}")
    return path
