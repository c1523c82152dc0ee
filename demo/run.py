"""`make demo`: fetch real assets, prepare every domain, continue pretraining SmolLM2-135M on one of them with 2 ZeRO-3
ranks on CPU, then print per-domain perplexity at step 0 against the last eval and where the MLflow run is."""
from __future__ import annotations

import argparse
import shutil
import string
import subprocess
import sys
import time
from pathlib import Path

import yaml

from demo.assets import CACHE, DOMAINS, build_domains, build_smollm2, say

HERE = Path(__file__).resolve().parent
SEQ_LEN = 256


def prep_domains(texts: dict[str, Path], model: Path, out: Path) -> list[str]:
    from data_prep.manifest import ManifestError, read_manifest, tokenizer_fingerprint
    from data_prep.prepare import PrepOptions, load_tokenizer, prepare_domain

    fp = tokenizer_fingerprint(load_tokenizer(str(model)))
    for name, src in texts.items():
        try:
            m = read_manifest(out / name)
            if m["seq_len"] == SEQ_LEN and m["tokenizer"]["vocab_sha256"] == fp["vocab_sha256"]:
                continue  # cached
        except ManifestError:
            pass
        prepare_domain(src, out, name, str(model), SEQ_LEN, PrepOptions(overwrite=True, progress=False))
        say(f"prepared {name}: {read_manifest(out / name)['splits']['test']['samples']} test samples")
    return list(texts)


def results_table(run_dir: Path, domains: list[str], train_domain: str) -> str:
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{run_dir.resolve()}/mlflow.db")
    exp = client.get_experiment_by_name("odyssey-demo")
    run = client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"], max_results=1)[0]
    rows = [f"{'domain':<12} {'ppl@0':>9} {'ppl@last':>9} {'ratio':>7}  steps evaluated"]
    for d in domains:
        hist = sorted(client.get_metric_history(run.info.run_id, f"eval/{d}/ppl"), key=lambda m: m.step)
        mark = " (trained)" if d == train_domain else ""
        rows.append(f"{d:<12} {hist[0].value:>9.2f} {hist[-1].value:>9.2f} {hist[-1].value / hist[0].value:>7.3f}  "
                    f"{[m.step for m in hist]}{mark}")
    return "\n".join(rows), run.info.run_id


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="demo_out", help="output folder (prepared domains, the run)")
    ap.add_argument("--nproc", type=int, default=2)
    args = ap.parse_args()
    out = Path(args.out).resolve()
    started = time.time()
    model = build_smollm2()
    texts = build_domains(list(DOMAINS))
    if len(texts) < 4:
        say(f"only {len(texts)} domains could be built here ({list(texts)}); the demo needs 4")
        return 1
    domains = prep_domains(texts, model, out / "domains")
    template = string.Template((HERE / "demo.yaml").read_text())
    cfg = yaml.safe_load(template.substitute(model=model, domains=out / "domains", out=out))
    train_domain = cfg["data"]["streams"][0]["name"]
    cfg["eval"]["domains"] = [{"name": d, "path": str(out / "domains" / d)} for d in domains if d != train_domain]
    run_dir = out / cfg["run"]["name"]
    shutil.rmtree(run_dir, ignore_errors=True)  # the demo is one fresh run each time
    (out / "demo.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    say(f"assets ready in {time.time() - started:.0f}s (cache: {CACHE}); training with {args.nproc} ZeRO-3 ranks")
    rc = subprocess.call([sys.executable, "-m", "trainer.cli", "train", str(out / "demo.yaml"),
                          "--nproc", str(args.nproc)])
    if rc:
        say(f"training failed (exit {rc})")
        return rc
    table, run_id = results_table(run_dir, domains, train_domain)
    print("\nPer-domain perplexity, base model (step 0) against the last eval:\n" + table)
    print(f"\nDemo finished in {time.time() - started:.0f}s.")
    print(f"MLflow run {run_id} in sqlite:///{run_dir}/mlflow.db; curves: {run_dir}/curves/degradation.png")
    print(f"Look at it with:  .venv/bin/mlflow ui --backend-store-uri sqlite:///{run_dir}/mlflow.db")
    return 0


if __name__ == "__main__":
    sys.exit(main())
