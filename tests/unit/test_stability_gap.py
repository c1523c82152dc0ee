import pytest

from analysis.stability import log_spaced_steps, stability_gap


def test_a_rise_then_a_recovery():
    gap = stability_gap([0, 1, 2, 5, 10], [1.0, 1.2, 1.5, 1.1, 0.98])
    assert gap == {"depth": pytest.approx(0.5), "worst_step": 2, "recovery_step": 10, "final_ratio": 0.98, "evals": 5}


def test_never_above_the_base_model():
    assert stability_gap([0, 5, 10], [1.0, 0.9, 0.95]) == {"depth": 0.0, "worst_step": None, "recovery_step": None,
                                                          "final_ratio": 0.95, "evals": 3}
    assert stability_gap([0], [1.0])["depth"] == 0.0


def test_a_rise_without_recovery():
    gap = stability_gap([0, 1, 2, 3], [1.0, 1.3, 1.1, 1.05])
    assert gap["worst_step"] == 1 and gap["recovery_step"] is None and gap["final_ratio"] == 1.05
    # a ratio at or below 1 before the worst eval is no recovery
    assert stability_gap([0, 1, 2, 3], [1.0, 0.9, 1.2, 1.1])["recovery_step"] is None


def test_recovery_exactly_at_the_base_and_the_first_maximum():
    gap = stability_gap([0, 10, 20, 40], [1.0, 1.25, 1.0, 0.9])
    assert gap["depth"] == 0.25 and gap["worst_step"] == 10 and gap["recovery_step"] == 20
    assert stability_gap([0, 1, 2, 3], [1.0, 1.5, 1.5, 0.9])["worst_step"] == 1


def test_no_evals_is_an_error():
    with pytest.raises(ValueError):
        stability_gap([], [])


def test_log_spaced_steps():
    assert log_spaced_steps(1000, 4) == [1, 10, 100, 1000]
    assert log_spaced_steps(10, 20) == list(range(1, 11))  # more steps asked than exist: each once
    assert log_spaced_steps(100, 1) == [100] and log_spaced_steps(1, 5) == [1]
    steps = log_spaced_steps(5000, 12)
    assert steps == sorted(set(steps)) and steps[0] == 1 and steps[-1] == 5000 and len(steps) == 12
    assert steps[1] / steps[0] == pytest.approx(steps[-1] / steps[-2], rel=0.5)  # evenly in log(step)


def test_gap_metrics_per_domain_over_the_evals_so_far():
    from analysis.stability import gap_metrics

    history = [{"step": s, "ppl_ratio": {"dom": r, "ref": q}} for s, r, q in
               [(0, 1.0, 1.0), (1, 1.3, 0.99), (3, 1.1, 0.98), (10, 0.95, 0.97)]]
    assert gap_metrics(history[:3]) == pytest.approx({
        "stability/dom/depth": 0.3, "stability/dom/final_ratio": 1.1, "stability/dom/worst_step": 1.0,
        "stability/ref/depth": 0.0, "stability/ref/final_ratio": 0.98})
    assert gap_metrics(history)["stability/dom/recovery_step"] == 10.0
    assert gap_metrics([]) == {}


def test_transition_threshold_config():
    from trainer.config import ConfigError, TransitionCfg, validate

    assert TransitionCfg().threshold == "quantile" and TransitionCfg().value == 0.5
    assert validate(TransitionCfg, {"threshold": "absolute", "value": 3.0}).value == 3.0
    with pytest.raises(ConfigError, match="quantile threshold lies in"):
        validate(TransitionCfg, {"threshold": "quantile", "value": 1.5})
