#!/usr/bin/env bash
# Odyssey's GPU device check on one H100 or H200: stages in order of value within --budget-s (default 480 s), each row
# printed and kept the moment its stage ends (bench/gpu_check.py says what).
# On a node without DeepSpeed, mosaicml-streaming or mlflow (no network), first gather the wheels where pip works:
#   bench/gpu_wheels.sh            # → .whl/ (≤ 64 MiB)
# then, on the node, from the repo root:
#   bench/gpu_check.sh [--budget-s 480 --stages speed,7b --stage-limit 7b=420 --shape tinyllama --steps 30 ...]
# rows.jsonl, table.md, stages.log (each stage's log tail) and gpu_check.log (this console) land in $OUT (default
# /tmp/odyssey-gpu-check); models, shards, checkpoints and built ops stay in --work (default /tmp/odyssey-gpu-work).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WHEELS=${WHEELS:-.whl}
SITE=${SITE:-/tmp/odyssey-site}
LOG_DIR=${OUT:-/tmp/odyssey-gpu-check}
mkdir -p "$LOG_DIR"
if ! "$PY" -c "import deepspeed, streaming, mlflow" 2>/dev/null; then
  ls "$WHEELS"/*.whl >/dev/null 2>&1 || { echo "gpu_check: no wheels in $WHEELS (run bench/gpu_wheels.sh where pip works)" >&2; exit 2; }
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHEELS"/*.whl
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export PATH="$(dirname "$("$PY" -c 'import sys; print(sys.executable)')"):$SITE/bin:$PATH"
"$PY" bench/gpu_check.py --out "$LOG_DIR" "$@" 2>&1 | tee "$LOG_DIR/gpu_check.log"
