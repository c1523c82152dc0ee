#!/usr/bin/env bash
# Gathers the wheels bench/gpu_check.sh installs on an offline GPU node (CUDA, nvcc, PyTorch 2.11, transformers 5.x,
# but no DeepSpeed, mosaicml-streaming or mlflow). Run it where pip reaches a package index, from the repo root:
#   bench/gpu_wheels.sh [DIR=.whl]
# Python 3.12 / x86-64 manylinux wheels, --no-deps: only what the node lacks, 64 MiB at most (checked at the end).
# The node's transformers 5.x is shadowed by the pinned 4.x (mosaicml-streaming requires transformers<5), with the
# tokenizers and huggingface-hub releases that 4.x accepts. DeepSpeed publishes only a source archive, so its wheel
# is built here (pure Python; its ops JIT-build on the node with nvcc).
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-.whl}
PY=${PYTHON:-python3}
mkdir -p "$DIR"
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform manylinux_2_24_x86_64
           --platform manylinux_2_5_x86_64)
BINARY=(
  transformers==4.57.6 "tokenizers>=0.22,<0.23" "huggingface-hub>=0.34,<1.0"
  mosaicml-streaming==0.13.0 zstd python-snappy cramjam brotli
  mlflow-skinny==3.17.2 cachetools databricks-sdk google-auth rsa pyasn1 pyasn1-modules gitpython gitdb smmap
  opentelemetry-api opentelemetry-sdk opentelemetry-semantic-conventions opentelemetry-proto "importlib-metadata<8.8" zipp
  sqlparse python-dotenv catalogue fastapi starlette
  "pydantic>=2.7,<3" pydantic-core annotated-types typing-inspection hjson zstandard
)
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${PLATFORMS[@]}" \
  -d "$DIR" "${BINARY[@]}"
"$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$DIR" deepspeed==0.19.8 2>/dev/null || \
  "$PY" -m pip wheel -q --no-deps -w "$DIR" deepspeed==0.19.8
total=$(du -cb "$DIR"/*.whl | tail -1 | cut -f1)
echo "[gpu_wheels] $(ls "$DIR"/*.whl | wc -l) wheels, $((total / 1048576)) MiB in $DIR"
if [ "$total" -gt $((64 * 1048576)) ]; then
  echo "[gpu_wheels] error: more than 64 MiB; drop what the node already has" >&2
  exit 1
fi
