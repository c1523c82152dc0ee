"""Inputs the model or DeepSpeed cannot take, refused through the real `odyssey train` before any rank starts or
weight loads: one line naming the numbers or the key, exit 2, no traceback, no run folder. Without these checks a
Llama trained silently on positions it never learned, a GPT-2 died with an IndexError at its first eval, and a
typo in a DeepSpeed key was a pydantic traceback after the model had loaded (or, at the top level, ignored)."""
import json
import shutil

import pytest

from tests import tiny
from tests.cli import odyssey
from tests.unit.test_cli_errors import write_config

BASE = {"model": {"path": "m"}, "data": {"streams": [{"name": "a", "path": "x"}]}}  # DeepSpeed checks need no files
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


@pytest.fixture(scope="module")
def models(assets, tmp_path_factory):
    """Beside the session's tiny Llama (256 positions, 512 tokens; domains prepared at seq_len 64): the same Llama
    with 32 positions, a GPT-2 with 32 learned positions and a Llama with 400 embedding rows, all with its tokenizer."""
    from transformers import GPT2Config, GPT2LMHeadModel

    root = tmp_path_factory.mktemp("limits")
    llama = shutil.copytree(assets["model"], root / "llama32")
    config = json.loads((llama / "config.json").read_text())
    (llama / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 32}))
    GPT2LMHeadModel(GPT2Config(vocab_size=512, n_positions=32, n_embd=32, n_layer=1, n_head=2)).save_pretrained(
        root / "gpt2_32")
    tiny.build_tiny_llama(root / "narrow", vocab_size=400)
    for name in ("gpt2_32", "narrow"):
        for f in TOKENIZER_FILES:
            shutil.copy(assets["model"] / f, root / name / f)
    return {"llama": llama, "gpt2": root / "gpt2_32", "narrow": root / "narrow"}


def refused(tmp_path, cfg, how, line):
    """`odyssey train cfg` --dry-run or --nproc 2 exits 2 with exactly `line`, before any rank or run folder."""
    r = odyssey(["train", cfg, *how.split()], tmp_path)  # a rank it started would print its line elsewhere
    assert r.returncode == 2, r.stdout + r.stderr
    assert [ln for ln in r.stderr.splitlines() if ln.startswith("odyssey: error")] == [f"odyssey: error: {line}"], \
        r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    assert "rank 0/2" not in r.stdout + r.stderr and "runner.py" not in r.stderr  # no rank was launched
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("how", ["--dry-run", "--nproc 2"])
@pytest.mark.parametrize("arch, key", [("llama", "max_position_embeddings"), ("gpt2", "n_positions")])
def test_seq_len_above_the_model_positions(tmp_path, assets, models, arch, key, how):
    cfg = write_config(tmp_path, assets, assets["domains"] / "prose", model=models[arch])
    refused(tmp_path, cfg, how, f"model.path {models[arch]}: seq_len 64 is above the model's 32 positions ({key} "
                                f"in config.json): prepare the domains with odyssey prep --seq-len 32 or less")


@pytest.mark.parametrize("how", ["--dry-run", "--nproc 2"])
def test_tokenizer_larger_than_the_embedding(tmp_path, assets, models, how):
    cfg = write_config(tmp_path, assets, assets["domains"] / "prose", model=models["narrow"])
    refused(tmp_path, cfg, how, f"model.path {models['narrow']}: its tokenizer has 512 tokens, more than the model's "
                                f"400 embedding rows (vocab_size in config.json): ids from 400 up have no embedding; "
                                f"use the tokenizer the model was trained with")


@pytest.mark.parametrize("how", ["--dry-run", "--nproc 2"])
def test_deepspeed_override_typo(tmp_path, assets, how):
    cfg = write_config(tmp_path, assets, assets["domains"] / "prose",
                       "deepspeed: {overrides: {zero_optimization.stage3_prefetch_bucket_sizee: 1000}}\n")
    refused(tmp_path, cfg, how, "deepspeed.overrides: unknown DeepSpeed key "
                                "'zero_optimization.stage3_prefetch_bucket_sizee'")


def test_deepspeed_json_top_level_typo(tmp_path, assets):
    """DeepSpeed itself ignores an unknown top-level key; the run would go on without the setting."""
    user = tmp_path / "mine.json"
    user.write_text(json.dumps({"train_micro_batch_size_per_gpu": "auto", "gradient_clipping": "auto",
                                "zero_optimization": {"stage": 3}, "steps_per_prnt": 10}))
    cfg = write_config(tmp_path, assets, assets["domains"] / "prose", f"deepspeed: {{config: {user}}}\n")
    refused(tmp_path, cfg, "--nproc 2", f"deepspeed.config {user}: unknown DeepSpeed key 'steps_per_prnt' "
                                        f"(DeepSpeed would ignore it; did you mean 'steps_per_print'?)")


def test_rope_scaling_stretches_the_limit(tmp_path, assets, models):
    """Linear RoPE scaling by 2 gives the 32-position Llama 64 positions: the plan goes on."""
    llama = models["llama"]
    config = json.loads((llama / "config.json").read_text())
    scaled = shutil.copytree(llama, tmp_path / "scaled")
    (scaled / "config.json").write_text(json.dumps({**config, "rope_scaling": {"rope_type": "linear", "factor": 2.0}}))
    cfg = write_config(tmp_path, assets, assets["domains"] / "prose", model=scaled)
    r = odyssey(["train", cfg, "--dry-run"], tmp_path)
    assert r.returncode == 0 and "seq_len           64" in r.stdout, r.stderr


def test_position_limits_as_transformers_applies_them():
    from transformers import BloomConfig, GPT2Config, LlamaConfig, MistralConfig, Qwen2Config

    from trainer.plan import position_limit

    assert position_limit(GPT2Config(n_positions=32)) == (32, "n_positions")
    assert position_limit(LlamaConfig(max_position_embeddings=32, rope_scaling={"rope_type": "dynamic",
                                                                                 "factor": 1.5}))[0] == 48
    # Qwen2.5's long-context recipe: YaRN x4 over its 32k; Llama 3.1 states its stretched length itself
    yarn = {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}
    assert position_limit(Qwen2Config(max_position_embeddings=32768, rope_scaling=yarn))[0] == 131072
    llama3 = {"rope_type": "llama3", "factor": 8.0, "original_max_position_embeddings": 8192,
              "low_freq_factor": 1.0, "high_freq_factor": 4.0}
    assert position_limit(LlamaConfig(max_position_embeddings=131072, rope_scaling=llama3)) == (
        131072, "max_position_embeddings")
    assert position_limit(MistralConfig(max_position_embeddings=256, sliding_window=16))[0] == 256  # a window: no limit
    assert position_limit(BloomConfig()) is None  # ALiBi: no position table


@pytest.mark.parametrize("overrides, line", [
    ({"zero_optimization.offload_optimizer.pin_memroy": True},
     "deepspeed.overrides: unknown DeepSpeed key 'zero_optimization.offload_optimizer.pin_memroy'"),
    ({"zero_optimization.stage": "three"},
     "deepspeed.overrides: DeepSpeed key 'zero_optimization.stage': Input should be 0, 1, 2, 3 or 3 (got 'three')"),
    ({"gradient_clippin": 1.0},
     "deepspeed.overrides: unknown DeepSpeed key 'gradient_clippin' (DeepSpeed would ignore it; did you mean "
     "'gradient_clipping'?)"),
])
def test_deepspeed_config_model_in_process(overrides, line):
    from trainer.config import ConfigError, config_from_dict
    from trainer.engine import fill_ds_config

    with pytest.raises(ConfigError) as err:
        fill_ds_config(config_from_dict({**BASE, "deepspeed": {"overrides": overrides}}), world_size=2)
    assert str(err.value) == line


def test_deepspeed_keys_it_reads_pass():
    """The shipped JSONs, and top-level sections DeepSpeed looks up by `key in config.keys()` or only when set."""
    from trainer.config import config_from_dict
    from trainer.engine import fill_ds_config

    for name in ("zero2", "zero3", "zero3_offload"):
        fill_ds_config(config_from_dict({**BASE, "deepspeed": {"config": name}}), world_size=8)
    sections = {"flops_profiler.enabled": False, "activation_checkpointing.partition_activations": False,
                "aio.block_size": 1048576, "wandb.enabled": False, "weight_quantization": {},
                "sequence_parallel_size": 1}
    fill_ds_config(config_from_dict({**BASE, "deepspeed": {"overrides": sections}}), world_size=8)
