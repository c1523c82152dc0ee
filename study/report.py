"""A study's aggregation, logged to its parent MLflow run: same-domain Δppl per run, its correlation with similarity
to the model's reference (Pearson and Spearman, with p-values), a scatter coloured by model, the token attribution, and
the paper's findings as tested here; per model and, with several models, pooled. The page itself: report_html.py."""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from analysis.transitions import CLASSES  # noqa: E402
from data_prep import console
from data_prep.disk import write_atomic  # noqa: E402
from data_prep.similarity import MEASURES  # noqa: E402
from study.findings import findings  # noqa: E402
from study.remedies import loo_fit, remedy_metrics, variant_table  # noqa: E402
from study.report_html import gap_text, number, remedies_section, section, transition_text, write_html  # noqa: E402


def domain_result(client, experiment: str, parent_id: str, key: str, domain: str, run_dir: Path,
                  reference: str) -> dict:
    """One run's numbers: its own domain's ppl at step 0 and at the last eval, the token statistics there, the
    forgetting on the model's reference and both stability gaps (their last values: the whole run)."""
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`mlflow.runName` = '{key}' and "
                                                                 f"tags.`mlflow.parentRunId` = '{parent_id}'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    run = runs[0]
    ppl = sorted(client.get_metric_history(run.info.run_id, f"eval/{domain}/ppl"), key=lambda m: m.step)
    last = ppl[-1].step
    tokens_json = run_dir / "tokens" / domain / f"step_{last}.json"
    tokens = json.loads(tokens_json.read_text()) if tokens_json.is_file() else {}
    last_of = run.data.metrics  # each metric's value at its last step

    def gap(name: str) -> dict | None:
        if f"stability/{name}/depth" not in last_of:
            return None
        return {k: last_of.get(f"stability/{name}/{k}") for k in ("depth", "worst_step", "recovery_step")}

    ref_ratio = last_of.get(f"eval/{reference}/ppl_ratio")
    shares = {c: last_of.get(f"tokens/{domain}/{c}_share") for c in CLASSES}  # analysis/transitions.py
    return {"domain": domain, "run_id": run.info.run_id, "ppl0": ppl[0].value, "ppl_last": ppl[-1].value,
            "forgetting": None if ref_ratio is None else ref_ratio - 1, "gap": gap(domain), "ref_gap": gap(reference),
            "transitions": shares if None not in shares.values() else None,
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
    """Δppl against similarity, one colour per model (a legend where there are several)."""
    fig, ax = plt.subplots(figsize=(7, 5), dpi=120)
    models = list(dict.fromkeys(r["model"] for r in rows))
    for i, model in enumerate(models):
        mine = [r for r in rows if r["model"] == model]
        xs, ys = [r["similarity"][measure] for r in mine], [r["delta_ppl"] for r in mine]
        ax.scatter(xs, ys, s=60, zorder=3, color=f"C{i}", label=model)
        for r, x, y in zip(mine, xs, ys):
            ax.annotate(r["domain"], (x, y), textcoords="offset points", xytext=(6, 6), fontsize=8)
    if len(models) > 1:
        ax.legend(title="model")
    ax.axhline(0, color="grey", linestyle="--", linewidth=1)
    ax.set_xlabel(f"{measure} to the reference" + (" (similarity)" if measure.endswith("cosine") else " (distance)"))
    ax.set_ylabel("same-domain Δppl (last eval − step 0)")
    ax.set_title(f"Pearson r = {corr['pearson_r']:.2f} (p = {corr['pearson_p']:.2g}), "
                 f"Spearman ρ = {corr['spearman_rho']:.2f} (p = {corr['spearman_p']:.2g}), n = {len(rows)}",
                 fontsize=10)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    write_atomic(out, fig.savefig)
    plt.close(fig)
    return out


def analyse(rows: list[dict], primary: str, top_k: int) -> dict:
    """Correlations for every measure and the findings stated on the primary one, for one group of runs."""
    corr_all = {m: correlations([r["similarity"][m] for r in rows], [r["delta_ppl"] for r in rows]) for m in MEASURES}
    return {"correlations": corr_all, "findings": findings(rows, corr_all[primary], primary, top_k)}


def collect_rows(study, similarity: dict[str, dict], client, parent_id: str) -> list[dict]:
    rows = []
    for model in study.model_list:
        for dom in study.domains:
            for variant in study.variant_names:
                key = study.run_key(model.name, dom.name, variant)
                r = domain_result(client, study.name, parent_id, key, dom.name, study.out / "runs" / key,
                                  model.reference.name)
                r.update(model=model.name, label=key, variant=variant,
                         similarity=similarity[model.name]["to_reference"][dom.name])
                rows.append(r)
    return rows


def aggregate(study, similarity: dict[str, dict], client, tracker) -> dict:
    """The analysis per model and pooled, logged to the parent run; writes the report and study/summary.json."""
    out_dir, primary, top_k = study.out, study.similarity.primary, study.train.eval.top_k
    every_row = collect_rows(study, similarity, client, tracker.run_id)
    rows = [r for r in every_row if r["variant"] == study.variant_names[0]]  # the baseline: similarity vs Δppl
    names = [m.name for m in study.model_list]
    per_model = {n: analyse([r for r in rows if r["model"] == n], primary, top_k) for n in names}
    pooled = per_model[names[0]] if len(names) == 1 else analyse(rows, primary, top_k)
    log_metrics(tracker, every_row, pooled["correlations"], primary, per_model if len(names) > 1 else {})
    png = scatter(rows, primary, pooled["correlations"][primary], out_dir / "study" / "scatter.png")
    parts = [] if len(names) == 1 else [section(f"All {len(names)} models, pooled ({len(rows)} runs)", rows, pooled,
                                                primary, top_k, png)]
    for n in names:
        mine = [r for r in rows if r["model"] == n]
        mpng = png if len(names) == 1 else scatter(mine, primary, per_model[n]["correlations"][primary],
                                                   out_dir / "study" / f"scatter_{n}.png")
        parts.append(section(f"Model {n}" if len(names) > 1 else "Per domain", mine, per_model[n], primary, top_k,
                             mpng))
    fits, variants = adapt_or_not(study, every_row, rows, tracker)
    parts.insert(0, remedies_section(variants, fits, primary, study.variant_names))
    heatmaps = sorted((out_dir / "similarity").rglob("similarity_heatmap.png"))
    note = (f"{len(study.domains)} domains per model: with so few points the p-values are weak evidence; the per-run "
            f"numbers and token attribution carry the finding.")
    report = write_html(study, every_row, parts, heatmaps, note, out_dir / "report" / "index.html")
    table = [{k: (str(v) if isinstance(v, Path) else v) for k, v in r.items()} for r in every_row]
    summary = {"rows": table, "correlations": pooled["correlations"], "primary": primary,
               "findings": pooled["findings"], "models": per_model, "fit": fits, "variants": variants}
    write_atomic(out_dir / "study" / "summary.json", json.dumps(summary, indent=2))
    for f in sorted((out_dir / "study").glob("*.png")) + [out_dir / "study" / "summary.json"]:
        tracker.log_artifact(f, "study")
    tracker.log_artifact(report, "report")
    for r in every_row:
        if r["curves"].is_file():
            tracker.log_artifact(r["curves"], f"curves/{r['label']}")
    print_summary(rows, primary, pooled, per_model)
    print_remedies(variants, fits, primary)
    return summary


def adapt_or_not(study, every_row: list[dict], rows: list[dict], tracker) -> tuple[dict, list[dict]]:
    """Per model, the fit of Δppl on the primary similarity across its domains (the first variant's runs) with its
    leave-one-out error; per model and domain, every variant side by side and the best on each axis. Logged to the
    parent run (study/remedies.py)."""
    primary = study.similarity.primary
    fits = {m.name: loo_fit([r["similarity"][primary] for r in rows if r["model"] == m.name],
                            [r["delta_ppl"] for r in rows if r["model"] == m.name]) for m in study.model_list}
    variants = variant_table(every_row)
    metrics, tags = remedy_metrics(every_row, variants, fits)
    tracker.log_metrics(metrics, step=0)
    for key, value in tags.items():
        tracker.set_tag(key, value)
    return fits, variants


def log_metrics(tracker, rows: list[dict], corr_all: dict, primary: str, per_model: dict) -> None:
    """study/<stat> (pooled, primary measure), study/<measure>/<stat>, study/<run>/delta_ppl; with several models
    also study/<model>/<stat> and study/<model>/<measure>/<stat>."""
    metrics = {f"study/{k}": v for k, v in corr_all[primary].items()}
    for m, c in corr_all.items():
        metrics.update({f"study/{m}/{k}": v for k, v in c.items()})
    for name, a in per_model.items():
        metrics.update({f"study/{name}/{k}": v for k, v in a["correlations"][primary].items()})
        for m, c in a["correlations"].items():
            metrics.update({f"study/{name}/{m}/{k}": v for k, v in c.items()})
    for r in rows:
        metrics[f"study/{r['label']}/delta_ppl"] = r["delta_ppl"]
        metrics[f"study/{r['label']}/ppl_ratio"] = r["ppl_ratio"]
    tracker.log_metrics({k: v for k, v in metrics.items() if v == v}, step=0)  # NaN (n < 3) is not logged
    tracker.set_tag("study.primary_similarity", primary)


def print_summary(rows: list[dict], primary: str, pooled: dict, per_model: dict) -> None:
    width = max(12, *(len(r["label"]) for r in rows))
    console.out(f"\n{'run':<{width}} {primary:>12} {'ppl@0':>8} {'ppl@last':>9} {'Δppl':>8}  top-5 degrading tokens")
    for r in rows:
        console.out(f"{r['label']:<{width}} {r['similarity'][primary]:>12.4g} {r['ppl0']:>8.2f} {r['ppl_last']:>9.2f} "
                    f"{r['delta_ppl']:>+8.2f}  {' | '.join(r['top5'])}")
    groups = {"": pooled} if len(per_model) == 1 else {"all models, pooled: ": pooled, **{
        f"model {n}: ": a for n, a in per_model.items()}}
    for title, a in groups.items():
        c = a["correlations"][primary]
        console.out(f"\n{title}{primary} vs Δppl: Pearson r {c['pearson_r']:.3f} (p {c['pearson_p']:.3g}), "
                    f"Spearman rho {c['spearman_rho']:.3f} (p {c['spearman_p']:.3g})")
        console.out(f"{title}the paper's findings, tested here:")
        for i, text in enumerate(a["findings"], 1):
            console.out(f"{i}. {text}")


def print_remedies(table: list[dict], fits: dict[str, dict], primary: str) -> None:
    """The adapt-or-not table: per model and domain each variant's Δppl, forgetting and stability gaps."""
    width = max(14, *(len(str(v)) for t in table for v in t["variants"]))
    console.out(f"\nadapt or not: {'model/domain':<24} {'variant':<{width}} {'Δppl':>8} {'forgetting':>11}  "
                f"{'gap (domain)':<30} {'gap (reference)':<30} tokens (domain)")
    for t in table:
        for name, v in t["variants"].items():
            best = [axis for axis, b in t["best"].items() if b == name and len(t["variants"]) > 1]
            mark = f"  best: {', '.join(best)}" if best else ""
            console.out(f"{'':14}{t['model'] + '/' + t['domain']:<24} {str(name or '-'):<{width}} "
                        f"{number(v['delta_ppl'], '+.2f'):>8} {number(v['forgetting'], '+.1%'):>11}  "
                        f"{gap_text(v['gap']):<30} {gap_text(v['ref_gap']):<30} "
                        f"{transition_text(v.get('transitions'))}{mark}")
    for model, f in fits.items():
        console.out(f"{model}: Δppl ≈ {number(f['intercept'], '.3g')} + {number(f['slope'], '.3g')} × {primary}; "
                    f"leave-one-out RMSE {number(f['loo_rmse'], '.3g')} against a spread (std) of "
                    f"{number(f['std'], '.3g')} over {f['n']} domains")
