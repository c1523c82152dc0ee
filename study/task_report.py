"""The task study's report: the two findings, the matrix as a table, its heatmap, and every run's curves (task
metric and mean |Δw| to the base against steps, read back from the runs' MLflow metrics), as one HTML page logged to
the parent run."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from analysis.plots import save  # noqa: E402
from data_prep.disk import write_atomic  # noqa: E402
from analysis.task_scores import cell_kind  # noqa: E402
from study.report_html import img, e  # noqa: E402


def run_curves(study, client, parent_id: str, out: Path) -> Path:
    """Left: each run's task metric on its own task's held-out examples; right: mean |Δw| to the base."""
    runs = client.search_runs([client.get_experiment_by_name(study.name).experiment_id],
                              f"tags.mlflow.parentRunId = '{parent_id}'")
    fig, (ax_task, ax_dw) = plt.subplots(1, 2, figsize=(12, 4.5), dpi=120)
    for r in sorted(runs, key=lambda r: r.info.run_name or ""):
        task = r.data.tags.get("task")
        if task is None:
            continue
        keys = [k for k in r.data.metrics if k.startswith(f"task/{task}/")]
        style = {"marker": "o", "linestyle": "--" if r.data.tags.get("fticl", "0") != "0" else "-",
                 "label": r.info.run_name}
        for key, ax in ((keys[0] if keys else None, ax_task), ("weights/mean_abs_delta", ax_dw)):
            points = sorted((m.step, m.value) for m in client.get_metric_history(r.info.run_id, key)) if key else []
            if points:
                ax.plot(*zip(*points), **style)
    ax_task.set_title("own task, held-out (Rouge-L or accuracy)")
    ax_dw.set_title("mean |Δw| to the base model (dashed: FTICL)")
    for ax in (ax_task, ax_dw):
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    return save(fig, out)


def _matrix_table(cells: list[dict]) -> str:
    columns = list(dict.fromkeys((c["test"], c["shots"]) for c in cells))
    models = list(dict.fromkeys(c["model"] for c in cells))
    at = {(c["model"], c["test"], c["shots"]): c for c in cells}
    mark = {"in-domain": "I", "out-of-domain": "O", "cross-task": "X", "base": ""}
    head = "".join(f"<th>{e(t)}<br>{k}-shot</th>" for t, k in columns)
    body = ""
    for m in models:
        tds = ""
        for t, k in columns:
            c = at.get((m, t, k))
            tds += "<td></td>" if c is None else \
                f"<td>{c['score']:.3f} {mark[cell_kind(c['model_task'], c['test_task'], c['ood'])]}</td>"
        body += f"<tr><td>{e(m)}</td>{tds}</tr>"
    return f"<table><tr><th>model</th>{head}</tr>{body}</table>"


def write_report(study, result: dict, tracker) -> Path:
    from mlflow import MlflowClient

    out = study.out / "report"
    curves = run_curves(study, MlflowClient(tracker.uri), tracker.run_id, out / "curves.png")
    findings = "".join(f"<li>{e(f['finding'])}: {e(f['text'])}</li>" for f in result["findings"])
    gains = "".join(
        f"<tr><td>{e(g['model'])}</td><td>{g['shots']}</td>"
        + "".join(f"<td>{g[k]:+.3f}</td>" if k in g else "<td></td>" for k in ("in-domain", "out-of-domain",
                                                                               "cross-task")) + "</tr>"
        for g in result["models"])
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{e(study.name)}</title>
<style>body{{font-family:sans-serif;max-width:1200px;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}td:first-child{{text-align:left}}</style></head><body>
<h1>Task study: {e(study.name)}</h1>
<p>Base model <code>{e(study.model.path)}</code>, fine-tuned on each task (loss on the target only) and, for FTICL,
with k demonstrations in every training prompt (k = {e(str(study.fticl))}). Scores: Rouge-L for generation, label-word
accuracy for classification. I = in-domain, O = out-of-domain, X = cross-task.</p>
<h2>The reference study's two findings, tested here</h2><ol>{findings}</ol>
<h2>Mean gain over the base model</h2>
<table><tr><th>model</th><th>shots</th><th>in-domain</th><th>out-of-domain</th><th>cross-task</th></tr>{gains}</table>
<h2>The matrix</h2>{_matrix_table(result['cells'])}{img(study.out / 'matrix' / 'heatmap.png')}
<h2>Training curves</h2>{img(curves)}</body></html>"""
    path = write_atomic(out / "index.html", page)
    tracker.log_artifact(path, "report")
    tracker.log_artifact(curves, "report")
    return path
