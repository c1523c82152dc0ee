"""Degradation curves: perplexity ratio to the base model (step 0) per domain, against tokens seen."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def degradation_curves(history: list[dict], train_domains: list[str], out: Path) -> Path:
    """history: [{"step", "tokens_seen", "ppl_ratio": {domain: ratio}}], in step order."""
    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    domains = list(history[0]["ppl_ratio"]) if history else []
    xs = [h["tokens_seen"] for h in history]
    for name in domains:
        ys = [h["ppl_ratio"][name] for h in history]
        trained = name in train_domains
        ax.plot(xs, ys, marker="o", linewidth=3 if trained else 1.5, zorder=3 if trained else 2,
                label=f"{name} (trained)" if trained else name)
    ax.axhline(1.0, color="grey", linestyle="--", linewidth=1)
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("perplexity / perplexity at step 0")
    ax.set_title("Perplexity against the base model, per domain")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out
