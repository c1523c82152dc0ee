"""The real SmolLM2-135M (fetched from PyPI and converted by demo/assets.py) under 2-rank ZeRO-3: halt + resume gives
the uninterrupted run's losses, and the export loads with from_pretrained and scores the same loss."""
import shutil
import time

import pytest

from tests.dist.helpers import run
from tests.dist.test_production import losses
from tests.cli import odyssey

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smol(tmp_path_factory):
    from data_prep.prepare import PrepOptions, prepare_domain
    from demo.assets import build_smollm2, code_docs
    from tests import tiny

    root = tmp_path_factory.mktemp("smol")
    model = build_smollm2()
    src = tiny.write_text_dir(root / "src", list(code_docs())[:120])
    prepare_domain(src, root / "domains", "code", str(model), 128, PrepOptions(progress=False, workers=0))
    cfg = root / "smol.yaml"
    cfg.write_text(f"""
model: {{path: {model}}}
data: {{streams: [{{name: code, path: {root / 'domains' / 'code'}}}]}}
optim: {{lr: 1.0e-4, warmup_steps: 1}}
run: {{out_dir: {root}, name: straight, max_steps: 4}}
eval: {{interval: 0, max_samples: 4, micro_batch: 2}}
checkpoint: {{interval: 2}}
tracking: {{experiment: test}}
""")
    yield cfg, root
    shutil.rmtree(root, ignore_errors=True)  # 1.6 GiB of checkpoints: the rest of the suite needs the disk


def test_smollm2_resume_and_export(smol):
    cfg, root = smol
    t0 = time.time()
    run(cfg, "checkpoint.interval=0", "checkpoint.save_final=false")  # the losses to compare with: no saves
    straight_s = time.time() - t0
    run(cfg, "run.name=halted", "run.halt_at_step=2")
    r = run(cfg, "run.name=halted", "--resume", "auto")
    load_line = next(line for line in r.stdout.splitlines() if "resumed from" in line)
    a, b = losses(root / "straight"), losses(root / "halted")
    assert sorted(b) == [1, 2, 3, 4]
    for step in a:
        assert b[step] == pytest.approx(a[step], abs=1e-6), step
    t0 = time.time()
    e = odyssey(["export", str(root / "halted"), str(root / "hf")])
    export_s = time.time() - t0
    assert e.returncode == 0, e.stderr[-3000:]
    print(f"\nSmolLM2-135M, 2 ranks: 4-step run without saves {straight_s:.0f}s; {load_line.strip()}; export "
          f"{export_s:.0f}s")

    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(root / "hf", dtype=torch.float32)
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
