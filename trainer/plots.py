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


def similarity_heatmaps(pairwise: dict, out: Path, measures: tuple[str, ...]) -> Path:
    """One annotated heatmap per measure of every domain (and the reference) against every other."""
    import numpy as np

    names = pairwise["names"]
    n = len(measures)
    cols = min(n, 3)
    rows = -(-n // cols)
    size = max(3.2, 0.55 * len(names) + 1.6)
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols, size * rows), dpi=110, squeeze=False)
    for ax, m in zip(axes.flat, measures):
        mat = np.array(pairwise[m])
        im = ax.imshow(mat, cmap="viridis_r" if m.endswith(("cosine",)) else "viridis")
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.set_title(m + ("  (similarity)" if m.endswith("cosine") else "  (distance)"), fontsize=10)
        for i in range(len(names)):
            for j in range(len(names)):
                r, g, b, _ = im.cmap(im.norm(mat[i, j]))
                ax.text(j, i, f"{mat[i, j]:.2g}", ha="center", va="center", fontsize=7,
                        color="black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle("Domain similarity, all pairs (dark = similar)")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out
