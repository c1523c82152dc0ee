#!/usr/bin/env bash
# Proves the wheels bench/gpu_wheels.sh gathers against a stand-in for the offline GPU node, on this CPU machine
# (`make gpu-wheels-check`): a Python 3.12 venv holding exactly the node's packages (bench/gpu_node_packages.txt,
# --no-deps), the wheels installed as bench/gpu_check.sh installs them (--target SITE, SITE on PYTHONPATH ahead of the
# node's own), then every requirement of what is carried met, every module Odyssey and the bench import imported, MDS
# shards written, a run logged to MLflow's sqlite store and `odyssey train --dry-run` run offline. One line per check;
# stops at the first failure. The venv (5 GB: torch 2.11.0's CUDA build, as on the node) is cached in CACHE and
# rebuilt when the pin list changes, SITE when the wheels change: about 4 minutes the first time, 1 to 2 after.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=${WHEELS:-.whl}
CACHE=${CACHE:-.cache/gpu-node}
NODE_PINS=bench/gpu_node_packages.txt
say() { echo "[gpu_wheels_check] $*"; }
fail() { say "FAIL: $*" >&2; exit 1; }
mkdir -p "$CACHE"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# A check in Python prints its own lines; the rest of what it prints (DeepSpeed's and MLflow's chatter) is shown only
# if it fails.
step() {
  local what=$1; shift
  "$@" >"$work/stdout" 2>"$work/stderr" || { cat "$work/stdout"; tail -n 15 "$work/stderr" >&2; fail "$what"; }
  grep "^\[gpu_wheels_check\]" "$work/stdout"
}

bench/gpu_wheels.sh "$WHEELS" 2>&1 | grep -v "is ignored" || fail "bench/gpu_wheels.sh"

# The node runs Python 3.12 (the carried wheels are cp312): any python3.12 here that runs, pyenv's included.
PY312=${PYTHON312:-}
for p in python3.12 "$HOME"/.pyenv/versions/3.12*/bin/python3.12; do
  [ -n "$PY312" ] && break
  "$p" -c "" 2>/dev/null && PY312=$p
done
[ -n "$PY312" ] || fail "no Python 3.12 here (set PYTHON312)"

venv=$(realpath -m "$CACHE/venv")
key=$(grep -v "^#" "$NODE_PINS" | cat - <("$PY312" -V) | sha256sum | cut -c1-16)  # the pins, not the comments
if [ "$(cat "$venv/.key" 2>/dev/null)" != "$key" ]; then
  say "building the node stand-in in $venv ($NODE_PINS, $("$PY312" -V)): a few minutes"
  rm -rf "$venv"
  "$PY312" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --no-deps -r "$NODE_PINS" >"$CACHE/pip.log" 2>&1 ||
    { grep -v "is ignored" "$CACHE/pip.log" >&2; fail "installing $NODE_PINS"; }
  echo "$key" >"$venv/.key"
fi
PY=$venv/bin/python
node=$("$PY" -c 'import sys, torch, numpy; print(f"Python {sys.version.split()[0]}, torch {torch.__version__}, \
numpy {numpy.__version__}")') || fail "the node stand-in's torch does not import ($venv)"
say "ok    node stand-in: $node"

site=$(realpath -m "$CACHE/site")
key=$(ls "$WHEELS"/*.whl | sha256sum | cut -c1-16)
if [ "$(cat "$site/.key" 2>/dev/null)" != "$key" ]; then
  rm -rf "$site"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" "$WHEELS"/*.whl \
    >"$CACHE/pip.log" 2>&1 || { cat "$CACHE/pip.log" >&2; fail "installing $WHEELS into $site"; }
  echo "$key" >"$site/.key"
fi
say "ok    $(ls "$WHEELS"/*.whl | wc -l) wheels installed in $site"
export PYTHONPATH="$PWD:$site" PYTHONNOUSERSITE=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 \
  TRANSFORMERS_OFFLINE=1 PATH="$venv/bin:$site/bin:$PATH"

# Every requirement of every carried distribution, and pyproject.toml's, met by SITE or the node, except these.
step "requirements" "$PY" - "$site" <<'EOF'
import importlib.metadata as md, sys, tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name as cn

LEFT_OUT = {  # (requirer, requirement): not carried, and why
    **dict.fromkeys([("mosaicml-streaming", n) for n in ("boto3", "google-cloud-storage", "oci", "paramiko",
                     "azure-identity", "azure-storage-blob", "azure-storage-file-datalake")],
                    "streaming's remote-store clients, imported only for remote shards"),
    ("odyssey", "mlflow"): "the MLflow UI server: mlflow-skinny + SQLAlchemy + alembic serve the sqlite store",
}
NODE_VERSION = {  # (requirer, requirement): the node's own release accepted against the bound
    ("mosaicml-streaming", "numpy"): "<2.2: the node's 2.5 ran streaming; an older one breaks its compiled packages",
    ("odyssey", "numpy"): "as for streaming", ("odyssey", "pandas"): "<3: token statistics ran on the node's 3.x",
    ("odyssey", "torch"): "the node's CUDA build", ("odyssey", "torchvision"): "the node's, beside its torch",
}
project = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
todo = [(d.metadata["Name"], r, ()) for d in md.distributions(path=[sys.argv[1]]) for r in d.requires or []]
todo += [("odyssey", r, ()) for r in project]
# Odyssey's default tracking store (sqlite) needs these beside mlflow-skinny.
todo += [("odyssey", r, ()) for r in ("sqlalchemy", "alembic")]
bad, checked, seen = [], 0, set()
while todo:
    who, text, extras = todo.pop()
    req = Requirement(text)
    if req.marker and not any(req.marker.evaluate({"extra": e}) for e in ("",) + extras):
        continue
    key = (cn(who), cn(req.name))
    if key in LEFT_OUT:
        continue
    checked += 1
    try:
        have = md.distribution(req.name)  # the first on sys.path: SITE shadows the node
    except md.PackageNotFoundError:
        bad.append(f"{who} requires {req}: not installed")
        continue
    if not req.specifier.contains(have.version, prereleases=True) and key not in NODE_VERSION:
        bad.append(f"{who} requires {req}: {req.name} {have.version} is there")
    if req.extras and (cn(req.name), tuple(req.extras)) not in seen:
        seen.add((cn(req.name), tuple(req.extras)))
        todo += [(req.name, r, tuple(req.extras)) for r in have.requires or []]
for b in bad:
    print(f"[gpu_wheels_check] unmet: {b}")
if bad:
    sys.exit(1)
print(f"[gpu_wheels_check] ok    {checked} requirements met (left out on purpose: {len(LEFT_OUT)}; "
      f"node's release accepted against a bound: {len(NODE_VERSION)})")
EOF

# Every module the project imports anywhere (function bodies included), found by reading its sources, and all of
# the project's own modules; one line per third-party package, with its version and where it came from.
step "imports" "$PY" - "$site" <<'EOF'
import ast, importlib, importlib.metadata as md, pathlib, sys, traceback

OWN = ("odyssey", "trainer", "data_prep", "analysis", "study", "launch", "bench")
NAMED = ["odyssey.cli", "trainer.train", "trainer.checkpoint_eval", "trainer.export", "bench.gpu_check",
         "bench.train_throughput", "bench.workload"]
EXTRA = {"deepspeed.ops.adam": ["FusedAdam"], "liger_kernel.transformers": [],
         "mlflow.store.tracking.sqlalchemy_store": ["SqlAlchemyStore"]}


def check(module, names=()):
    try:
        m = importlib.import_module(module)
        for n in names:
            if not hasattr(m, n):
                importlib.import_module(f"{module}.{n}")
    except BaseException as e:
        last = traceback.format_exception_only(e)[-1].strip()
        sys.exit(f"[gpu_wheels_check] cannot import {module}{' (' + ', '.join(names) + ')' if names else ''}: {last}")


third, own = dict(EXTRA), []
for pkg in OWN:
    for f in sorted(pathlib.Path(pkg).rglob("*.py")):
        if f.name != "__main__.py":
            own.append(".".join(f.with_suffix("").parts).removesuffix(".__init__"))
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Import):
                pairs = [(a.name, []) for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                pairs = [(node.module, [a.name for a in node.names])]
            else:
                continue
            for mod, names in pairs:
                top = mod.split(".")[0]
                if top not in sys.stdlib_module_names and top not in OWN + ("tests", "demo"):
                    third.setdefault(mod, []).extend(n for n in names if n != "*")
for module in NAMED:
    check(module)
    print(f"[gpu_wheels_check] ok    import {module}")
for module in own:
    check(module)
print(f"[gpu_wheels_check] ok    import all {len(own)} modules of {', '.join(OWN)}")
dists = md.packages_distributions()
for top in sorted({m.split(".")[0] for m in third}):
    mods = sorted(m for m in third if m.split(".")[0] == top)
    for m in mods:
        check(m, sorted(set(third[m])))
    name = dists.get(top, [top])[0]
    where = "carried" if str(md.distribution(name).locate_file("")).startswith(sys.argv[1]) else "node"
    print(f"[gpu_wheels_check] ok    import {top} {md.version(name)} ({where}): "
          f"{len(mods)} module{'s' * (len(mods) > 1)}")
EOF

# MDS shards of a tiny tokenizer's text (mosaicml-streaming's writer) and a run in MLflow's sqlite store, then the
# dry run on a tiny Llama.
step "tiny model, shards and MLflow" "$PY" - "$work" <<'EOF'
import sys
from pathlib import Path

from data_prep.prepare import PrepOptions, prepare_domain
from tests import tiny
from trainer.tracking import Tracker
from transformers import AutoTokenizer

root = Path(sys.argv[1])
docs = tiny.prose_docs(200)
tiny.build_tokenizer(root / "model", docs)
tiny.build_tiny_llama(root / "model", len(AutoTokenizer.from_pretrained(root / "model")))
prepare_domain(tiny.write_text_dir(root / "src", docs), root / "domains", "prose", str(root / "model"), 128,
               PrepOptions(progress=False, workers=0))
domain = root / "domains" / "prose"
(root / "run.yaml").write_text(f"model: {{path: {root / 'model'}}}\n"
                               f"data: {{streams: [{{name: prose, path: {domain}}}], seq_len: 128}}\n")
print("[gpu_wheels_check] ok    tiny Llama, tokenizer and MDS shards written")

tracker = Tracker(root / "run", "gpu-wheels-check", enabled=True)
tracker.start("check", wait=True)
tracker.log_params({"check": "1"})
tracker.log_metrics({"train/loss": 1.5}, step=1)
tracker.log_artifact(root / "run.yaml")
assert tracker.close(), "the writer did not drain"
client = tracker.client
assert [m.value for m in client.get_metric_history(tracker.run_id, "train/loss")] == [1.5]
assert [a.path for a in client.list_artifacts(tracker.run_id)] == ["run.yaml"]
print("[gpu_wheels_check] ok    MLflow sqlite store (Odyssey's default): run, params, metric, artifact")
EOF
out=$("$PY" -m odyssey train "$work/run.yaml" --dry-run 2>&1) ||
  { tail -n 20 <<<"$out" >&2; fail "odyssey train --dry-run"; }
say "ok    odyssey train --dry-run: $(grep -m1 "parameters" <<<"$out" | xargs)"
say "all checks passed"
