"""Degradation curves: perplexity ratio to the base model (step 0) per domain, against tokens seen."""
from __future__ import annotations

from pathlib import Path

import matplotlib

from analysis.stability import stability_gap
from data_prep.disk import write_atomic

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def save(fig, out: Path) -> Path:
    """Lay out, write and close a figure (the one way every plot here ends): whole or not at all, and a full disk
    is one line (DiskFull)."""
    try:
        fig.tight_layout()
        return write_atomic(out, fig.savefig)
    finally:
        plt.close(fig)


def degradation_curves(history: list[dict], train_domains: list[str], out: Path) -> Path:
    """history: [{"step", "tokens_seen", "ppl": {domain: ppl}, "ppl_ratio": {domain: ratio}}], in step order."""
    fig, (ax_ppl, ax_ratio) = plt.subplots(1, 2, figsize=(13, 5), dpi=120)
    domains = list(history[0]["ppl_ratio"]) if history else []
    xs = [h["tokens_seen"] for h in history]
    for name in domains:
        trained = name in train_domains
        style = {"marker": "o", "linewidth": 3 if trained else 1.5, "zorder": 3 if trained else 2,
                 "label": f"{name} (trained)" if trained else name}
        ax_ppl.plot(xs, [h["ppl"][name] for h in history], **style)
        ratios = [h["ppl_ratio"][name] for h in history]
        line, = ax_ratio.plot(xs, ratios, **style)
        mark_gap(ax_ratio, [h["step"] for h in history], xs, ratios, line.get_color())
    ax_ppl.set_yscale("log")
    ax_ppl.set_ylabel("perplexity (log scale)")
    ax_ppl.set_title("Perplexity per domain")
    ax_ratio.axhline(1.0, color="grey", linestyle="--", linewidth=1)
    ax_ratio.set_ylabel("perplexity / perplexity at step 0")
    ax_ratio.set_title("Against the base model (above 1: worse)\n+x% @ step: the stability gap; star: back at base",
                       fontsize=10)
    for ax in (ax_ppl, ax_ratio):
        ax.set_xlabel("tokens seen")
        ax.grid(True, alpha=0.3)
    ax_ratio.legend(loc="best", fontsize=9)
    return save(fig, out)


def mark_gap(ax, steps: list[int], xs: list, ratios: list[float], color) -> None:
    """The stability gap on a ratio curve: its depth at the worst eval, a star where the domain is back at base."""
    gap = stability_gap(steps, ratios)
    if gap["depth"] <= 0:
        return
    worst = steps.index(gap["worst_step"])
    ax.annotate(f"+{gap['depth']:.1%} @ {gap['worst_step']}", (xs[worst], ratios[worst]), color=color, fontsize=8,
                textcoords="offset points", xytext=(4, 6))
    if gap["recovery_step"] is not None:
        back = steps.index(gap["recovery_step"])
        ax.plot([xs[back]], [ratios[back]], marker="*", markersize=12, color=color, zorder=4)


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
    return save(fig, out)


def token_report(summary: dict, domain: str, step: int, out: Path, top: int = 15) -> Path:
    """Top degrading and improving tokens (summed Δloss), the Δloss histogram, and loss by position."""
    fig, axes = plt.subplots(2, 2, figsize=(13, 9), dpi=110)
    for ax, key, colour, title in ((axes[0, 0], "top_degrading", "tab:red", "most degrading tokens"),
                                   (axes[0, 1], "top_improving", "tab:green", "most improving tokens")):
        rows = summary[key][:top][::-1]
        labels = [f"'{r['token']}'  ({r['category'].replace('_', ' ')}, n={r['count']})" for r in rows]
        ax.barh(range(len(rows)), [r["delta_sum"] for r in rows], color=colour)
        ax.set_yticks(range(len(rows)), labels, fontsize=8)
        ax.set_xlabel("summed Δloss (nats) over occurrences")
        ax.set_title(title, fontsize=10)
        ax.axvline(0, color="grey", linewidth=0.8)
    h = summary["histogram"]
    edges = h["edges"]
    axes[1, 0].bar(edges[:-1], h["counts"], width=[b - a for a, b in zip(edges[:-1], edges[1:])], align="edge")
    axes[1, 0].set_yscale("log")
    axes[1, 0].axvline(0, color="grey", linewidth=0.8)
    axes[1, 0].set_xlabel("Δloss per token occurrence (nats)")
    axes[1, 0].set_ylabel("occurrences (log)")
    axes[1, 0].set_title("distribution of per-token Δloss", fontsize=10)
    pos = summary["position"]
    mids = [(p["start"] + p["end"]) / 2 for p in pos]
    axes[1, 1].plot(mids, [p["mean_base_loss"] for p in pos], marker="o", label="base model (step 0)")
    axes[1, 1].plot(mids, [p["mean_loss"] for p in pos], marker="o", label=f"step {step}")
    axes[1, 1].set_xlabel("position in sequence")
    axes[1, 1].set_ylabel("mean loss (nats)")
    axes[1, 1].set_title("loss by position", fontsize=10)
    axes[1, 1].legend(fontsize=8)
    share = ", ".join(f"{k.replace('_', ' ')} {v:+.0%}" for k, v in summary["category_share"].items())
    fig.suptitle(f"{domain} @ step {step}: total Δloss {summary['total_delta']:+.1f} nats over "
                 f"{summary['tokens']:,} tokens; top-{len(summary['top_degrading'])} share "
                 f"{summary['topk_share']:.0%}\nshare of Δ by category: {share}", fontsize=10)
    return save(fig, out)


def task_heatmap(cells: list[dict], gains: list[dict], out: Path) -> Path:
    """Per shot count: the models × test sets matrix of scores, each cell marked in-domain (I), out-of-domain (O),
    cross-task (X) or base (B), and beside it each fine-tuned model's mean gain over the base by cell kind."""
    from analysis.task_scores import BASE, CROSS, IN, OUT, cell_kind

    shots = sorted({c["shots"] for c in cells})
    models = list(dict.fromkeys(c["model"] for c in cells))
    tests = list(dict.fromkeys(c["test"] for c in cells))
    kinds = [IN, OUT, CROSS]
    letter = {IN: "I", OUT: "O", CROSS: "X", BASE: "B"}
    fig, axes = plt.subplots(len(shots), 2, figsize=(4 + 1.1 * len(tests) + 4, 1 + 0.55 * len(models) * len(shots)),
                             dpi=120, gridspec_kw={"width_ratios": [max(len(tests), 1), 3]}, squeeze=False)
    for row, k in enumerate(shots):
        ax, ax_gain = axes[row]
        grid = [[None] * len(tests) for _ in models]
        for c in cells:
            if c["shots"] == k:
                grid[models.index(c["model"])][tests.index(c["test"])] = c
        values = [[float("nan") if g is None else g["score"] for g in r] for r in grid]
        ax.imshow(values, cmap="viridis", vmin=0, vmax=1, aspect="auto")
        for i, r in enumerate(grid):
            for j, g in enumerate(r):
                if g is not None:
                    mark = letter[cell_kind(g["model_task"], g["test_task"], g["ood"])]
                    ax.text(j, i, f"{g['score']:.2f}\n{mark}", ha="center", va="center", fontsize=7, color="white")
        ax.set_xticks(range(len(tests)), tests, rotation=30, ha="right", fontsize=8)
        ax.set_yticks(range(len(models)), models, fontsize=8)
        ax.set_title(f"{k}-shot: score (Rouge-L or accuracy); I/O/X = in-domain / out-of-domain / cross-task")
        tuned = [g for g in gains if g["shots"] == k]
        gain_values = [[g.get(kind, float("nan")) for kind in kinds] for g in tuned]
        ax_gain.imshow(gain_values or [[float("nan")] * 3], cmap="RdBu", vmin=-0.5, vmax=0.5, aspect="auto")
        for i, r in enumerate(gain_values):
            for j, v in enumerate(r):
                if v == v:
                    ax_gain.text(j, i, f"{v:+.2f}", ha="center", va="center", fontsize=7)
        ax_gain.set_xticks(range(3), ["in-domain", "out-of-domain", "cross-task"], fontsize=8)
        ax_gain.set_yticks(range(len(tuned)), [g["model"] + (" (FTICL)" if g["fticl"] else "") for g in tuned],
                           fontsize=8)
        ax_gain.set_title("mean gain over the base")
    return save(fig, out)
