"""`make demo`: fetch real assets and run a small real study on CPU: the study prepares every domain, then SmolLM2-135M
continues pretraining on each of five domains with 2 ZeRO-3 ranks, against a reference; the parent MLflow run holds the
similarity-vs-degradation correlation, the scatter plot, token attribution, the paper's findings as found, and an HTML
report."""
from __future__ import annotations

import argparse
import shutil
import string
import subprocess
import sys
import time
from pathlib import Path

from data_prep import console
from data_prep.console import log
from demo.assets import CACHE, DOMAINS, build_domains, build_smollm2

HERE = Path(__file__).resolve().parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="demo_out", help="output folder (prepared domains, the study)")
    ap.add_argument("--tasks", action="store_true", help="the task study instead (make demo-tasks)")
    ap.add_argument("--remedies", action="store_true", help="adapt or not: two domains x three variants instead "
                                                            "(make demo-remedies)")
    args = ap.parse_args()
    out = Path(args.out).resolve()
    if args.tasks:
        return task_demo(out)
    if args.remedies:
        return domain_demo(out, "remedies", "remedies.yaml", "one child run per domain and variant")
    return domain_demo(out, "study", "study.yaml", "one child run per domain")


def domain_demo(out: Path, name: str, template: str, children: str) -> int:
    """A study of the demo domains from the template in demo/ (`make demo`, `make demo-remedies`)."""
    started = time.time()
    model = build_smollm2()
    texts = build_domains(list(DOMAINS))
    study_yaml = string.Template((HERE / template).read_text()).substitute(model=model, texts=CACHE / "text", out=out)
    if set(texts) != set(DOMAINS):
        log(f"the demo needs the domains {sorted(DOMAINS)}; only {sorted(texts)} could be built here", tag="demo")
        return 1
    rc = run_study(out, name, study_yaml)
    if rc:
        return rc
    store = out / name / "mlflow.db"
    console.out(f"\nDemo finished in {time.time() - started:.0f}s.")
    console.out(f"Report: {out / name / 'report' / 'index.html'}")
    console.out(f"MLflow: sqlite:///{store} ({children} under the parent run)")
    console.out(f"Look at it with:  .venv/bin/mlflow ui --backend-store-uri sqlite:///{store}")
    return 0


def run_study(out: Path, name: str, study_yaml: str) -> int:
    """A fresh study under out/<name> (prepared data is kept) from the filled-in study file out/<name>.yaml."""
    shutil.rmtree(out / name, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.yaml").write_text(study_yaml)
    log(f"assets ready (cache: {CACHE}); running {out / f'{name}.yaml'}", tag="demo")
    rc = subprocess.call([sys.executable, "-m", "odyssey", "study", str(out / f"{name}.yaml")])
    if rc:
        log(f"the study failed (exit {rc})", tag="demo")
    return rc


def task_demo(out: Path) -> int:
    """`make demo-tasks`: four real tasks built offline, the task study on SmolLM2-135M, its matrix and report."""
    from demo.task_assets import build_tasks

    started = time.time()
    model = build_smollm2()
    build_tasks(out / "task_sources")
    study_yaml = string.Template((HERE / "tasks.yaml").read_text()).substitute(model=model, out=out,
                                                                                tasks=out / "task_sources")
    rc = run_study(out, "task_study", study_yaml)
    if rc:
        return rc
    console.out(f"\nTask demo finished in {time.time() - started:.0f}s.")
    console.out(f"Matrix: {out / 'task_study' / 'matrix' / 'matrix.csv'} and heatmap.png beside it")
    console.out(f"Report: {out / 'task_study' / 'report' / 'index.html'}")
    console.out(f"MLflow: sqlite:///{out / 'task_study' / 'mlflow.db'} (parent run 'odyssey-demo-tasks')")
    return 0


if __name__ == "__main__":
    sys.exit(main())
