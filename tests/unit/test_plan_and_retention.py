"""--dry-run numbers come from DeepSpeed's own estimator on the exact parameter counts of Llama-2 shapes, and
checkpoint retention keeps the newest K plus every M-th."""
import subprocess
import sys

import pytest

from trainer import checkpoint

LLAMA2 = {  # published parameter counts
    "7b": (dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                num_key_value_heads=32), 6_738_415_616),
    "70b": (dict(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64,
                 num_key_value_heads=8), 68_976_648_192),
}


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    from transformers import LlamaConfig

    root = tmp_path_factory.mktemp("shapes")
    for name, (kw, _) in LLAMA2.items():
        LlamaConfig(vocab_size=32000, max_position_embeddings=4096, **kw).save_pretrained(root / name)
    return root


@pytest.mark.parametrize("name", ["7b", "70b"])
@pytest.mark.parametrize("gpus", [8, 64])
def test_dry_run_matches_deepspeed_estimator(shapes, tmp_path, name, gpus):
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

    from trainer.plan import model_shape

    total, largest = model_shape(str(shapes / name))
    assert total == LLAMA2[name][1]
    cfg = tmp_path / "p.yaml"
    cfg.write_text(f"model: {{path: {shapes / name}, dtype: bf16}}\n"
                   "data: {streams: [{name: x, path: /nowhere}], seq_len: 4096}\nrun: {max_tokens: 1000000000}\n")
    r = subprocess.run([sys.executable, "-m", "odyssey", "train", str(cfg), "--dry-run", "--world-size",
                        str(gpus)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    _, gpu, _ = estimate_zero3_model_states_mem_needs(total, largest, min(gpus, 8), gpus // min(gpus, 8),
                                                      cpu_offload=False, cpu_offload_params=False)
    assert f"per device      {gpu / 2**30:,.2f} GiB" in r.stdout
    assert f"{total:,} parameters" in r.stdout
    assert f"tokens per step   {gpus * 4096:,}" in r.stdout


def test_retention_keeps_last_k_and_every_m(tmp_path):
    for step in range(1, 11):
        d = tmp_path / checkpoint.tag_for(step)
        d.mkdir()
        if step != 10:
            (d / checkpoint.COMPLETE).write_text("{}")
    removed = checkpoint.prune(tmp_path, keep_last=2, keep_every=4)
    left = sorted(p.name for p in tmp_path.iterdir())
    # 10 is incomplete (a save in progress or interrupted after 9): never touched; 8, 9 newest complete; 4 and 8 kept
    assert left == [checkpoint.tag_for(s) for s in (4, 8, 9, 10)]
    assert len(removed) == 6
