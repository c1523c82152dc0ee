"""The stability gap: early in continued pretraining, the loss on what the model knew rises, then recovers (Guo et
al. 2024, "Efficient Continual Pre-training by Mitigating the Stability Gap", arXiv 2406.14833). Measured per domain
from its evals in step order, on r_t = ppl_t / ppl_0 (ppl_0: the base model, step 0):

- depth = max_t r_t − 1 when that is > 0, else 0 (the domain never got worse than the base model);
- worst_step = the first step t with r_t = max r (None when depth is 0);
- recovery_step = the first eval step after worst_step with r_t ≤ 1 (None if none, or when depth is 0);
- final_ratio = r at the last eval.

On the reference set (a sample of the original pretraining data standing in for it) r_t measures forgetting: the
gap is how much of the base model's ability the run lost on the way, and whether it came back. The rise is early and
short, so evals are best spaced evenly in log(step) (`log_spaced_steps`), dense at the start.
"""
from __future__ import annotations

import numpy as np


def stability_gap(steps: list[int], ratios: list[float]) -> dict:
    """Depth, worst step, recovery step and final ratio of one domain's ppl ratios, evals in step order."""
    if not steps or len(steps) != len(ratios):
        raise ValueError(f"stability_gap needs one ratio per eval step, at least one: {len(steps)} steps, "
                         f"{len(ratios)} ratios")
    worst = int(np.argmax(ratios))  # the first maximum
    depth = float(ratios[worst]) - 1.0
    if depth <= 0:
        return {"depth": 0.0, "worst_step": None, "recovery_step": None, "final_ratio": float(ratios[-1]),
                "evals": len(steps)}
    recovery = next((int(s) for s, r in zip(steps[worst + 1:], ratios[worst + 1:]) if r <= 1.0), None)
    return {"depth": depth, "worst_step": int(steps[worst]), "recovery_step": recovery,
            "final_ratio": float(ratios[-1]), "evals": len(steps)}


def log_spaced_steps(max_steps: int, n: int) -> list[int]:
    """n eval steps evenly spaced in log(step) from 1 to max_steps (fewer where small steps coincide), sorted,
    ending at max_steps: dense where the gap opens."""
    if max_steps < 1 or n < 1:
        raise ValueError(f"log_spaced_steps needs max_steps >= 1 and n >= 1, not {max_steps} and {n}")
    spaced = np.rint(np.geomspace(1, max_steps, n)).astype(int) if n > 1 else []
    return sorted({int(s) for s in spaced} | {max_steps})


def gap_metrics(history: list[dict]) -> dict[str, float]:
    """`stability/<domain>/{depth, final_ratio}` and, once there is a gap, `worst_step` and (once it closed)
    `recovery_step`, from a run's evals so far: `history` as analysis/plots.degradation_curves takes it, step 0
    first. Logged at every eval, so each step's values describe the run up to that step."""
    out: dict[str, float] = {}
    for name in (history[0]["ppl_ratio"] if history else {}):
        points = [(h["step"], h["ppl_ratio"][name]) for h in history if name in h["ppl_ratio"]]
        gap = stability_gap([s for s, _ in points], [r for _, r in points])
        out[f"stability/{name}/depth"] = gap["depth"]
        out[f"stability/{name}/final_ratio"] = gap["final_ratio"]
        for key in ("worst_step", "recovery_step"):
            if gap[key] is not None:
                out[f"stability/{name}/{key}"] = float(gap[key])
    return out

