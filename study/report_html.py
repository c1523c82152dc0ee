"""The study's self-contained HTML report: the findings, tables, correlations and every plot embedded, per model and
(with several models) pooled."""
from __future__ import annotations

import base64
import html
from pathlib import Path

from data_prep.disk import write_atomic

e = html.escape


def img(path: Path) -> str:
    if not path.is_file():
        return "<p><em>(missing: {})</em></p>".format(e(str(path)))
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img src="data:image/png;base64,{data}" style="max-width:100%">'


def _run_table(rows: list[dict], primary: str, top_k: int) -> str:
    head = "".join(f"<th>{e(h)}</th>" for h in ["run", primary, "ppl @0", "ppl @last", "Δppl", "ratio",
                                                  "top-5 degrading tokens", f"top-{top_k} share"])
    body = "".join(
        "<tr>" + "".join(f"<td>{c}</td>" for c in [
            e(r["label"]), f"{r['similarity'][primary]:.4g}", f"{r['ppl0']:.2f}", f"{r['ppl_last']:.2f}",
            f"{r['delta_ppl']:+.2f}", f"{r['ppl_ratio']:.3f}",
            " ".join(f"<code style='background:#eee;padding:0 3px'>'{e(t)}'</code>" for t in r["top5"]),
            "" if r["topk_share"] is None else f"{r['topk_share']:.0%}"]) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _corr_table(corr_all: dict) -> str:
    rows = "".join(f"<tr><td>{e(m)}</td>" + "".join(f"<td>{c[k]:.3g}</td>" for k in
                   ("pearson_r", "pearson_p", "spearman_rho", "spearman_p")) + "</tr>" for m, c in corr_all.items())
    return ("<table><tr><th>measure</th><th>Pearson r</th><th>p</th><th>Spearman ρ</th><th>p</th></tr>"
            f"{rows}</table>")


def _category_table(rows: list[dict]) -> str:
    cats = sorted({k for r in rows for k in r["category_share"]})
    body = "".join("<tr><td>{}</td><td>{}</td>{}</tr>".format(
        e(r["label"]), "" if r.get("total_delta") is None else f"{r['total_delta']:+.0f}",
        "".join(f"<td>{r['category_share'].get(c, 0):+.0%}</td>" for c in cats)) for r in rows)
    return (f"<table><tr><th>run</th><th>total Δloss (nats)</th>{''.join(f'<th>{e(c)}</th>' for c in cats)}</tr>"
            f"{body}</table>")


def section(title: str, rows: list[dict], analysis: dict, primary: str, top_k: int, scatter_png: Path) -> str:
    """One model's part of the report (or the pooled part): findings, runs, correlations, scatter, token shares."""
    statements = "".join(f"<li>{e(t)}</li>" for t in analysis["findings"])
    return f"""<h2>{e(title)}</h2>
<h3>The paper's three findings, tested here</h3><ol>{statements}</ol>
<h3>Per run</h3>{_run_table(rows, primary, top_k)}
<h3>Similarity against Δppl</h3>{_corr_table(analysis['correlations'])}{img(scatter_png)}
<h3>Which tokens carry the change</h3><p>Share of each run's total Δloss (own test split, last eval, summed over
tokens; negative = the domain improved) by token category. The shares sum to 100% of that total, whatever its sign: a
category with a share of the opposite sign moved against the domain as a whole.</p>{_category_table(rows)}"""


def number(x, fmt: str) -> str:
    return "–" if x is None or x != x else format(x, fmt)


def gap_text(g: dict | None) -> str:
    if not g or not g.get("depth"):
        return "none"
    back = g.get("recovery_step")
    return f"+{g['depth']:.1%} @ {g['worst_step']:.0f}, " + ("not back" if back is None else f"back @ {back:.0f}")


def transition_text(shares: dict | None) -> str:
    """The token transitions that change: low→high (the base model's easy tokens lost) and high→low (learned)."""
    if not shares:
        return "n/a"
    return f"L→H {shares['lh']:.1%}, H→L {shares['hl']:.1%}"


def remedies_section(table: list[dict], fits: dict[str, dict], primary: str, variants: list) -> str:
    """Adapt or not: per model and domain every variant's gain, forgetting and stability gaps side by side, the best
    on each axis, and how well similarity alone predicted Δppl (study/remedies.py)."""
    head = "".join(f"<th>{e(h)}</th>" for h in ["model / domain", "variant", "Δppl (domain)", "forgetting (reference)",
                                                  "stability gap (domain)", "stability gap (reference)",
                                                  "token transitions (domain)"])
    body = ""
    for entry in table:
        for name, v in entry["variants"].items():
            marks = [axis for axis, best in entry["best"].items() if best == name and len(entry["variants"]) > 1]
            label = f"{entry['model']} / {entry['domain']}"
            best = f" (best: {', '.join(marks)})" if marks else ""
            body += (f"<tr><td>{e(label)}</td><td>{e(str(name or '-'))}{best}</td>"
                     f"<td>{number(v['delta_ppl'], '+.2f')}</td><td>{number(v['forgetting'], '+.1%')}</td>"
                     f"<td>{e(gap_text(v['gap']))}</td><td>{e(gap_text(v['ref_gap']))}</td>"
                     f"<td>{e(transition_text(v.get('transitions')))}</td></tr>")
    fit = "".join(f"<li>{e(m)}: Δppl ≈ {number(f['intercept'], '.3g')} + {number(f['slope'], '.3g')} × {e(primary)} "
                  f"over {f['n']} domains; leave-one-out error {number(f['loo_rmse'], '.3g')} (RMSE), "
                  f"{number(f['loo_mae'], '.3g')} (MAE), against a spread of {number(f['std'], '.3g')} "
                  "(std of Δppl)"
                  "</li>" for m, f in fits.items())
    which = f"the variants ({', '.join(e(str(v)) for v in variants)})" if variants != [None] else "the runs"
    return f"""<h2>Adapt or not</h2><p>Per domain, {which}: Δppl on the domain (negative: adaptation helped),
forgetting on the model's reference (its ppl ratio to step 0 − 1: positive is ability lost), the stability gap
of each (the deepest rise above the base model, and the eval where it was back), and the domain's token transitions
at the last eval (the shares of scored tokens the base model predicted well and the run now predicts badly, L→H, and
the reverse, H→L; docs/ANALYSIS.md).</p>
<table><tr>{head}</tr>{body}</table>
<h3>Does similarity alone predict the outcome?</h3><ul>{fit}</ul>"""


def write_html(study, rows: list[dict], sections: list[str], heatmaps: list[Path], note: str, out: Path) -> Path:
    models = ", ".join(f"<code>{e(m.name)}</code> ({e(m.path)}, reference <code>{e(m.reference.name)}</code>)"
                       for m in study.model_list)
    per_run = "".join(f"<h3>{e(r['label'])}</h3>{img(r['curves'])}{img(r['token_png'])}" for r in rows)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{e(study.name)}</title>
<style>body{{font-family:sans-serif;max-width:1200px;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}td:first-child{{text-align:left}}</style></head><body>
<h1>Study: {e(study.name)}</h1>
<p>Base model(s): {models}. One continued-pretraining run per model and domain. Δppl is the domain's own test-split
perplexity at the last eval minus at step 0 (positive: worse).</p>
<p>{e(note)}</p>
{''.join(sections)}
<h2>Similarity of all domains</h2>{''.join(img(p) for p in heatmaps)}
<h2>Each run</h2>{per_run}</body></html>"""
    write_atomic(out, page)
    return out
