"""Session fixtures: a tiny tokenizer + Llama and two small prepared domains, built once per test session."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests import tiny  # noqa: E402

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# every job the tests start finds this Python's tools first, as in an activated venv (bench/gpu_check.sh puts them
# first too): one `ninja` builds DeepSpeed's JIT ops for the whole suite, so the ops built once are reused by all
# (a build by another ninja version is thrown away and rebuilt: minutes on 2 cores)
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
SEQ_LEN = 64


@pytest.fixture(scope="session")
def assets(tmp_path_factory) -> dict[str, Path]:
    from data_prep.prepare import PrepOptions, prepare_domain

    root = tmp_path_factory.mktemp("assets")
    prose, code = tiny.prose_docs(300), tiny.code_docs(40)
    model = root / "model"
    tiny.build_tokenizer(model, prose + code)
    from transformers import AutoTokenizer

    tiny.build_tiny_llama(model, len(AutoTokenizer.from_pretrained(model)))
    src = {"prose": tiny.write_text_dir(root / "src" / "prose", prose),
           "code": tiny.write_jsonl(root / "src" / "code.jsonl", code)}
    for name, path in src.items():
        prepare_domain(path, root / "domains", name, str(model), SEQ_LEN, PrepOptions(progress=False, workers=0))
    return {"root": root, "model": model, "domains": root / "domains", "prose_src": src["prose"],
            "code_src": src["code"], "prose_docs": prose, "code_docs": code}


@pytest.fixture(scope="session", autouse=True)
def _leave_dev_shm_clean(tmp_path_factory):
    """DeepSpeed's CPU comm op leaves a ~69 MB /dev/shm buffer per rank and master port; the tests start dozens of
    jobs on distinct ports. Ranks the tests SIGKILL also leave mosaicml-streaming's segments (NNNNNN_*). Remove what
    this session created once it is done (no job of ours runs then); streaming's only where its `_locals` names a
    folder of this session, so a live job of someone else's is never touched."""
    import time

    started = time.time()
    base = str(tmp_path_factory.getbasetemp())
    yield
    shm = Path("/dev/shm")
    doomed = [f for f in shm.glob("deepspeed_allreduce_buffer_*") if _mtime(f) >= started - 1]
    for locals_ in shm.glob("[0-9][0-9][0-9][0-9][0-9][0-9]_locals"):
        try:
            if _mtime(locals_) >= started - 1 and base in locals_.read_bytes().decode(errors="replace"):
                doomed += shm.glob(locals_.name.split("_")[0] + "_*")
        except OSError:
            pass
    for f in doomed:
        try:
            f.unlink()
        except OSError:
            pass


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


@pytest.fixture(scope="module", autouse=True)
def release_streaming_shared_memory():
    """mosaicml-streaming's SharedMemory registers its own cleanup with atexit, so every dataset a test opens in this
    process keeps its /dev/shm files open until the process exits: ~20,000 over the whole suite, the open-file limit
    (docs/PITFALLS.md). The ones a module's tests made are released when the module ends, as a process exit would."""
    from streaming.base.shared import memory

    made = []
    original = memory.SharedMemory.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        made.append(self)

    memory.SharedMemory.__init__ = init
    yield
    memory.SharedMemory.__init__ = original
    for shm in made:
        shm.cleanup()
