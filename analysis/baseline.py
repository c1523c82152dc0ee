"""The base model's per-token losses, computed once at step 0 and cached, so later evals (and resumed runs and
standalone evals) compare token by token without running the base model again.

    <run_dir>/baseline/<domain>.npy    float32 [samples, seq_len-1], sample order of the eval split
    <run_dir>/baseline/<domain>.json   eval_set_hash, model_hash, tokens, shape

The key is a hash of the eval targets (the token ids scored) and a hash of the model (config.json + weight file names
and sizes, cheap even for 70B); a cache whose key does not match is not used.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from data_prep.disk import write_atomic


def eval_set_hash(targets: np.ndarray) -> str:
    h = hashlib.sha256(str(targets.shape).encode())
    h.update(np.ascontiguousarray(targets, dtype=np.int32).tobytes())
    return h.hexdigest()[:16]


def model_hash(model_path: str | Path) -> str:
    root = Path(model_path)
    h = hashlib.sha256()
    if (root / "config.json").is_file():
        h.update((root / "config.json").read_bytes())
    for f in sorted(root.glob("*")):
        if f.suffix in (".safetensors", ".bin", ".pt", ".gguf"):
            h.update(f"{f.name}:{f.stat().st_size}".encode())
    return h.hexdigest()[:16]


class BaselineCache:
    def __init__(self, run_dir: Path, model_key: str):
        self.dir = Path(run_dir) / "baseline"
        self.model_key = model_key
        self._mem: dict[str, np.ndarray] = {}

    def save(self, domain: str, targets: np.ndarray, losses: np.ndarray) -> dict:
        """Each file whole or not at all (a full disk: DiskFull naming it); the .json, which `load` requires, goes
        first and comes back last, so a failed save leaves no pair that does not belong together."""
        # tokens: the scored positions (a task row's prompt and padding have label -100 and loss 0)
        meta = {"eval_set_hash": eval_set_hash(targets), "model_hash": self.model_key, "tokens": int((targets >= 0).sum()),
                "shape": list(losses.shape)}
        (self.dir / f"{domain}.json").unlink(missing_ok=True)
        write_atomic(self.dir / f"{domain}.npy", lambda tmp: np.save(tmp, losses.astype(np.float32)))
        write_atomic(self.dir / f"{domain}.json", json.dumps(meta, indent=2) + "\n")
        self._mem[domain] = losses
        return meta

    def load(self, domain: str, targets: np.ndarray) -> np.ndarray | None:
        """The cached base losses for exactly these eval targets and this model, or None."""
        if domain in self._mem and self._mem[domain].shape == targets.shape:
            return self._mem[domain]
        meta_path, arr_path = self.dir / f"{domain}.json", self.dir / f"{domain}.npy"
        if not (meta_path.is_file() and arr_path.is_file()):
            return None
        meta = json.loads(meta_path.read_text())
        if meta["eval_set_hash"] != eval_set_hash(targets) or meta["model_hash"] != self.model_key:
            return None
        self._mem[domain] = np.load(arr_path)
        return self._mem[domain]
