"""--dry-run numbers come from DeepSpeed's own estimator on the exact parameter counts of Llama-2 shapes, and
checkpoint retention keeps the newest K plus every M-th."""

import pytest

from trainer import checkpoint
from tests.cli import odyssey

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
    r = odyssey(["train", cfg, "--dry-run", "--world-size", gpus])
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


def test_stage_auto_picks_zero2_where_its_model_states_fit_in_half_a_device():
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    from trainer.plan import pick_stage

    gib = 2**30
    total, largest = LLAMA2["7b"][1], 131_072_000
    need = estimate_zero2_model_states_mem_needs(total, 8, 1, cpu_offload=False)[1]  # 37.7 GiB on 8 devices
    ds = {"zero_optimization": {"stage": 3}}
    assert pick_stage(ds, total, largest, 8, 1, 80 * gib)[0] == 2
    assert pick_stage(ds, total, largest, 8, 1, 40 * gib)[0] == 3
    assert pick_stage(ds, total, largest, 8, 1, int(2 * need))[0] == 2
    assert pick_stage(ds, total, largest, 8, 1, int(2 * need) - 1)[0] == 3
    offload = {"zero_optimization": {"stage": 3, "offload_optimizer": {"device": "cpu"}}}
    assert pick_stage(offload, total, largest, 8, 1, 10_000 * gib) == (3, "the DeepSpeed JSON offloads")


@pytest.mark.parametrize("checkpointing", [False, True])
def test_activation_estimate_against_autograds_saved_tensors(checkpointing):
    """The estimate behind the dry-run's micro-batch fit, against the bytes autograd really keeps for backward."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from trainer.loss import use_head_loss
    from trainer.plan import activation_bytes_per_token

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=1000, hidden_size=128, intermediate_size=352, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2)
    model = LlamaForCausalLM(config).train()
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    use_head_loss(model, "chunked")
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept = {}

    def pack(t):
        if t.untyped_storage().data_ptr() not in params:
            kept[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    ids = torch.randint(0, 1000, (2, 256))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(input_ids=ids, labels=ids)
    measured = sum(kept.values()) / ids.numel()
    estimate = activation_bytes_per_token(config, 4, checkpointing, chunked_loss=True)
    if checkpointing:  # what stays saved, plus the one layer the backward recomputes at a time
        one_layer = activation_bytes_per_token(config, 4, False, True) / config.num_hidden_layers
        assert measured <= estimate <= measured + 1.2 * one_layer
    else:
        assert estimate == pytest.approx(measured, rel=0.15)


def test_dry_run_shows_the_stage_it_picks_and_the_micro_batch_that_fits(shapes, tmp_path):
    import re

    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    cfg = tmp_path / "p.yaml"
    cfg.write_text(f"model: {{path: {shapes / '7b'}, dtype: bf16}}\n"
                   "data: {streams: [{name: x, path: /nowhere}], seq_len: 4096}\ndeepspeed: {stage: auto}\n")
    r = odyssey(["train", cfg, "--dry-run", "--world-size", "8", "--device-gib", "80"])
    assert r.returncode == 0, r.stderr
    need = estimate_zero2_model_states_mem_needs(LLAMA2["7b"][1], 8, 1, cpu_offload=False)[1]
    assert (f"zero stage        ZeRO-2 (deepspeed.stage auto: ZeRO-2 model states {need / 2**30:,.1f} GiB <= half "
            "of 80 GiB)") in r.stdout, r.stdout
    fit = re.search(r"micro-batch fit   on 80 GiB \(--device-gib\), seq 4096: at most (\d+) without activation "
                    r"checkpointing, (\d+) with it \(data.micro_batch is 1\)", r.stdout)
    assert fit and 0 < int(fit[1]) < int(fit[2]), r.stdout
