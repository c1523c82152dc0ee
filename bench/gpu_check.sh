#!/usr/bin/env bash
# Odyssey's GPU device check: about 8 minutes on one H100 or H200, prints one table (bench/gpu_check.py says what).
# On a node without DeepSpeed, mosaicml-streaming or mlflow (no network), first gather the wheels where pip works:
#   bench/gpu_wheels.sh            # → .whl/ (≤ 64 MiB)
# then, on the node, from the repo root:
#   bench/gpu_check.sh [--shape tinyllama --seq-len 2048 --micro-batch 8 --steps 30 ...]
# The log and the table land in $OUT (default /tmp/odyssey-gpu-check), or $OUT/gpu_check.log when OUT is set.
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
"$PY" bench/gpu_check.py --out "$LOG_DIR/work" "$@" 2>&1 | tee "$LOG_DIR/gpu_check.log"
