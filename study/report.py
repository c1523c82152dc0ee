"""A study's aggregation, logged to its parent MLflow run: same-domain Δppl per domain, its correlation with similarity
to the reference (Pearson and Spearman, with p-values), a scatter plot, the token attribution across domains, and a
self-contained HTML report that embeds every plot."""
from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from data_prep.similarity import MEASURES  # noqa: E402
from study.findings import findings  # noqa: E402


def domain_result(client, experiment: str, parent_id: str, domain: str, run_dir: Path) -> dict:
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.domain = '{domain}' and "
                                                                 f"tags.`mlflow.parentRunId` = '{parent_id}'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    run = runs[0]
    ppl = sorted(client.get_metric_history(run.info.run_id, f"eval/{domain}/ppl"), key=lambda m: m.step)
    last = ppl[-1].step
    tokens_json = run_dir / "tokens" / domain / f"step_{last}.json"
    tokens = json.loads(tokens_json.read_text()) if tokens_json.is_file() else {}
    return {"domain": domain, "run_id": run.info.run_id, "ppl0": ppl[0].value, "ppl_last": ppl[-1].value,
            "last_step": last, "delta_ppl": ppl[-1].value - ppl[0].value, "ppl_ratio": ppl[-1].value / ppl[0].value,
            "topk_share": tokens.get("topk_share"), "category_share": tokens.get("category_share", {}),
            "total_delta": tokens.get("total_delta"), "category_count": tokens.get("category_count", {}),
            "top5": [r["token"] for r in tokens.get("top_degrading", [])[:5]],
            "curves": run_dir / "curves" / "degradation.png", "token_png": tokens_json.with_suffix(".png")}


def correlations(xs: list[float], ys: list[float]) -> dict[str, float]:
    from scipy import stats

    if len(xs) < 3 or len(set(xs)) < 2 or len(set(ys)) < 2:
        return {"pearson_r": float("nan"), "pearson_p": float("nan"), "spearman_rho": float("nan"),
                "spearman_p": float("nan")}
    p = stats.pearsonr(xs, ys)
    s = stats.spearmanr(xs, ys)
    return {"pearson_r": float(p.statistic), "pearson_p": float(p.pvalue), "spearman_rho": float(s.statistic),
            "spearman_p": float(s.pvalue)}


def scatter(rows: list[dict], measure: str, corr: dict, out: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 5), dpi=120)
    xs, ys = [r["similarity"][measure] for r in rows], [r["delta_ppl"] for r in rows]
    ax.scatter(xs, ys, s=60, zorder=3)
    for r, x, y in zip(rows, xs, ys):
        ax.annotate(r["domain"], (x, y), textcoords="offset points", xytext=(6, 6), fontsize=9)
    ax.axhline(0, color="grey", linestyle="--", linewidth=1)
    ax.set_xlabel(f"{measure} to the reference" + (" (similarity)" if measure.endswith("cosine") else " (distance)"))
    ax.set_ylabel("same-domain Δppl (last eval − step 0)")
    ax.set_title(f"Pearson r = {corr['pearson_r']:.2f} (p = {corr['pearson_p']:.2g}), "
                 f"Spearman ρ = {corr['spearman_rho']:.2f} (p = {corr['spearman_p']:.2g}), n = {len(rows)}",
                 fontsize=10)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def _img(path: Path) -> str:
    if not path.is_file():
        return "<p><em>(missing: {})</em></p>".format(html.escape(str(path)))
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img src="data:image/png;base64,{data}" style="max-width:100%">'


def write_html(study, rows: list[dict], corr_all: dict, primary: str, out_dir: Path, note: str,
               statements: list[str]) -> Path:
    e = html.escape
    head = "".join(f"<th>{e(h)}</th>" for h in ["domain", primary, "ppl @0", "ppl @last", "Δppl", "ratio",
                                                  "top-5 degrading tokens", f"top-{study.train.eval.top_k} share"])
    body = "".join(
        "<tr>" + "".join(f"<td>{c}</td>" for c in [
            e(r["domain"]), f"{r['similarity'][primary]:.4g}", f"{r['ppl0']:.2f}", f"{r['ppl_last']:.2f}",
            f"{r['delta_ppl']:+.2f}", f"{r['ppl_ratio']:.3f}",
            " ".join(f"<code style='background:#eee;padding:0 3px'>'{e(t)}'</code>" for t in r["top5"]),
            "" if r["topk_share"] is None else f"{r['topk_share']:.0%}"]) + "</tr>" for r in rows)
    corr_rows = "".join(f"<tr><td>{e(m)}</td>" + "".join(f"<td>{c[k]:.3g}</td>" for k in
                        ("pearson_r", "pearson_p", "spearman_rho", "spearman_p")) + "</tr>"
                        for m, c in corr_all.items())
    cats = sorted({k for r in rows for k in r["category_share"]})
    cat_rows = "".join("<tr><td>{}</td><td>{}</td>{}</tr>".format(
        e(r["domain"]), "" if r.get("total_delta") is None else f"{r['total_delta']:+.0f}",
        "".join(f"<td>{r['category_share'].get(c, 0):+.0%}</td>" for c in cats)) for r in rows)
    per_domain = "".join(f"<h3>{e(r['domain'])}</h3>{_img(r['curves'])}{_img(r['token_png'])}" for r in rows)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{e(study.name)}</title>
<style>body{{font-family:sans-serif;max-width:1200px;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}td:first-child{{text-align:left}}</style></head><body>
<h1>Study: {e(study.name)}</h1>
<p>Base model <code>{e(study.model.path)}</code>; reference <code>{e(study.reference.name)}</code>; one continued-pretraining
run per domain. Δppl is the domain's own test-split perplexity at the last eval minus at step 0 (positive: worse).</p>
<p>{e(note)}</p>
<h2>The paper's three findings, tested on this study</h2><ol>{''.join(f"<li>{e(t)}</li>" for t in statements)}</ol>
<h2>Per domain</h2><table><tr>{head}</tr>{body}</table>
<h2>Similarity against Δppl</h2><table><tr><th>measure</th><th>Pearson r</th><th>p</th><th>Spearman ρ</th><th>p</th></tr>
{corr_rows}</table>{_img(out_dir / 'study' / 'scatter.png')}
<h2>Which tokens carry the change</h2><p>Share of each domain's total Δloss (own test split, last eval, summed over
tokens; negative = the domain improved) by token category. The shares sum to 100% of that total, whatever its sign: a
category with a share of the opposite sign moved against the domain as a whole.</p>
<table><tr><th>domain</th><th>total Δloss (nats)</th>{''.join(f'<th>{e(c)}</th>' for c in cats)}</tr>{cat_rows}</table>
<h2>Similarity of all domains</h2>{_img(out_dir / 'similarity' / 'similarity_heatmap.png')}
<h2>Each run</h2>{per_domain}</body></html>"""
    path = out_dir / "report" / "index.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page)
    return path


def aggregate(study, similarity: dict, client, tracker) -> dict:
    out_dir = study.out
    rows = []
    for dom in study.domains:
        r = domain_result(client, study.name, tracker.run_id, dom.name, out_dir / "runs" / dom.name)
        r["similarity"] = similarity["to_reference"][dom.name]
        rows.append(r)
    primary = study.similarity.primary
    corr_all = {m: correlations([r["similarity"][m] for r in rows], [r["delta_ppl"] for r in rows]) for m in MEASURES}
    statements = findings(rows, corr_all[primary], primary, study.train.eval.top_k)
    log_metrics(tracker, rows, corr_all, primary)
    png = scatter(rows, primary, corr_all[primary], out_dir / "study" / "scatter.png")
    note = (f"{len(rows)} domains: with so few points the p-values are weak evidence; the per-domain numbers and "
            f"token attribution carry the finding.")
    report = write_html(study, rows, corr_all, primary, out_dir, note, statements)
    table = [{k: (str(v) if isinstance(v, Path) else v) for k, v in r.items()} for r in rows]
    (out_dir / "study" / "summary.json").write_text(json.dumps({"rows": table, "correlations": corr_all,
                                                                "primary": primary, "findings": statements}, indent=2))
    for f in (png, out_dir / "study" / "summary.json"):
        tracker.log_artifact(f, "study")
    tracker.log_artifact(report, "report")
    for r in rows:
        if r["curves"].is_file():
            tracker.log_artifact(r["curves"], f"curves/{r['domain']}")
    print_summary(rows, primary, corr_all[primary], statements)
    return {"rows": table, "correlations": corr_all, "findings": statements}


def log_metrics(tracker, rows: list[dict], corr_all: dict, primary: str) -> None:
    metrics = {f"study/{k}": v for k, v in corr_all[primary].items()}
    for m, c in corr_all.items():
        metrics.update({f"study/{m}/{k}": v for k, v in c.items()})
    for r in rows:
        metrics[f"study/{r['domain']}/delta_ppl"] = r["delta_ppl"]
        metrics[f"study/{r['domain']}/ppl_ratio"] = r["ppl_ratio"]
    tracker.log_metrics({k: v for k, v in metrics.items() if v == v}, step=0)  # NaN (n < 3) is not logged
    tracker.set_tag("study.primary_similarity", primary)


def print_summary(rows: list[dict], primary: str, c: dict, statements: list[str]) -> None:
    print(f"\n{'domain':<12} {primary:>12} {'ppl@0':>8} {'ppl@last':>9} {'Δppl':>8}  top-5 degrading tokens")
    for r in rows:
        print(f"{r['domain']:<12} {r['similarity'][primary]:>12.4g} {r['ppl0']:>8.2f} {r['ppl_last']:>9.2f} "
              f"{r['delta_ppl']:>+8.2f}  {' | '.join(r['top5'])}")
    print(f"{primary} vs Δppl: Pearson r {c['pearson_r']:.3f} (p {c['pearson_p']:.3g}), "
          f"Spearman rho {c['spearman_rho']:.3f} (p {c['spearman_p']:.3g})")
    print("\nThe paper's findings, tested here:")
    for i, text in enumerate(statements, 1):
        print(f"{i}. {text}")
