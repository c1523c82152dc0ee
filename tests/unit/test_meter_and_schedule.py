import pytest

from trainer.config import config_from_dict
from trainer.meter import flops_per_token, mfu
from trainer.train import eval_steps

BASE = {"model": {"path": "m"}, "data": {"streams": [{"name": "a", "path": "x"}]}}


def test_flops_per_token_llama2_7b():
    from transformers import LlamaConfig

    cfg = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                      vocab_size=32000, tie_word_embeddings=False)
    n = 6_738_415_616
    # 6 x (N minus the input embedding lookup) + 12 L d T
    assert flops_per_token(cfg, n, 4096) == 6 * (n - 32000 * 4096) + 12 * 32 * 4096 * 4096
    assert mfu(3000.0, 6e10, 989.0) == pytest.approx(3000 * 6e10 / 989e12)
    assert mfu(3000.0, 6e10, None) is None


def test_eval_steps_interval_and_log_spaced():
    cfg = config_from_dict({**BASE, "eval": {"interval": 4}})
    assert eval_steps(cfg, 10) == {4, 8, 10}
    cfg = config_from_dict({**BASE, "eval": {"log_spaced": 5}})
    steps = sorted(eval_steps(cfg, 1000))
    assert steps == [1, 6, 32, 178, 1000]  # dense early, where the curves move most
    cfg = config_from_dict({**BASE, "eval": {"interval": 0}})
    assert eval_steps(cfg, 7) == {7}


def test_one_stop_only():
    from trainer.config import ConfigError

    with pytest.raises(ConfigError, match="set only one of run.max_steps, run.max_tokens, run.epochs"):
        config_from_dict({**BASE, "run": {"max_steps": 5, "epochs": 1}})
    assert config_from_dict(BASE).run.max_steps == 100
