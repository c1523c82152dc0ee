#!/usr/bin/env bash
# Gathers the wheels bench/gpu_check.sh installs on an offline GPU node (CUDA, nvcc, PyTorch 2.11, transformers 5.x,
# but no DeepSpeed, mosaicml-streaming or mlflow; its packages: bench/gpu_node_packages.txt). Run it where pip reaches
# a package index, from the repo root:
#   bench/gpu_wheels.sh [DIR=.whl]
# Python 3.12 / x86-64 manylinux wheels, --no-deps, each pinned: only what the node lacks or has at a version that a
# carried package refuses, 64 MiB at most (checked at the end). Wheels already in DIR are kept, others there removed
# (two versions of one package stop the install on the node). `make gpu-wheels-check` proves the set against a
# stand-in for the node: every requirement met, everything imported, a dry run.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-.whl}
PY=${PYTHON:-python3}
mkdir -p "$DIR"
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform manylinux_2_24_x86_64
           --platform manylinux_2_5_x86_64)
# The closure of deepspeed, mosaicml-streaming, mlflow-skinny, liger-kernel and pyproject.toml's dependencies over the
# pinned installs' requirements, less what the node has at a version they accept. Left out on purpose (the check
# allows exactly these): streaming's remote-store clients (boto3, google-cloud-storage, oci, paramiko, azure-*),
# imported only for remote shards; the full mlflow (its UI server does not fit; mlflow-skinny with SQLAlchemy and
# alembic serves the default sqlite store); numpy<2.2 and pandas<3 (the node's 2.5 and 3.x run streaming and the token
# statistics; an older numpy would break the node's compiled packages); torch/torchvision (the node's CUDA build).
BINARY=(
  # transformers 4.x shadows the node's 5.x on PYTHONPATH (mosaicml-streaming requires <5), with the tokenizers and
  # huggingface-hub it accepts; fsspec, xxhash and certifi differ from the node's as datasets, mosaicml-streaming and
  # databricks-sdk require.
  transformers==4.57.6 tokenizers==0.22.2 huggingface-hub==0.36.2 fsspec==2026.2.0 xxhash==3.8.2
  certifi==2026.10.19.post1
  mosaicml-streaming==0.13.0 zstd==1.5.6.1 python-snappy==0.7.3 cramjam==2.14.0 brotli==1.2.1 catalogue==2.0.10
  # deepspeed's; pydantic-core is the exact release pydantic 2.14.4 requires
  hjson==3.1.0 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
  mlflow-skinny==3.17.2 cachetools==7.3.3 databricks-sdk==0.167.0 google-auth==2.63.1 pyasn1==0.6.5
  pyasn1-modules==0.4.2 cryptography==50.0.2 cffi==2.1.1 pycparser==3.12 gitpython==3.2.1 gitdb==4.0.12
  smmap==5.0.3 opentelemetry-api==1.45.2 opentelemetry-sdk==1.45.2 opentelemetry-semantic-conventions==0.66b2
  opentelemetry-proto==1.45.2 importlib-metadata==9.1.0 sqlparse==0.6.1 python-dotenv==1.2.4 fastapi==0.165.0
  starlette==1.10.0 uvicorn==0.55.0
  sqlalchemy==2.1.9 alembic==1.20.1 mako==1.4.3  # mlflow's sqlite store, Odyssey's default tracking URI
  # pyproject.toml's own: datasets, zstandard, and rouge-score's nltk
  datasets==4.8.5 dill==0.4.1 multiprocess==0.70.19 zstandard==0.25.0 nltk==3.10.4 defusedxml==0.7.1
  liger-kernel==0.8.5  # Triton kernels: the trainer's fused linear cross-entropy on CUDA
)
# Published only as source archives: built here (pure Python).
SOURCE=(deepspeed==0.19.8 rouge-score==0.1.2)

# A pin's wheel: name-version-*.whl, the name normalized as wheel file names spell it.
wheel_of() { local n=${1%%==*}; ls "$DIR"/*.whl 2>/dev/null | grep -i "/${n//-/_}-${1#*==}-" || true; }
want=() missing=() missing_src=()
for p in "${BINARY[@]}" "${SOURCE[@]}"; do
  w=$(wheel_of "$p"); want+=("$w")
  [ -n "$w" ] && continue
  if [[ " ${SOURCE[*]} " == *" $p "* ]]; then missing_src+=("$p"); else missing+=("$p"); fi
done
for w in "$DIR"/*.whl; do
  [ -e "$w" ] && [[ " ${want[*]} " != *" $w "* ]] && { echo "[gpu_wheels] removing $w (not pinned)"; rm "$w"; }
done
[ ${#missing[@]} -eq 0 ] || "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp "${PLATFORMS[@]}" -d "$DIR" "${missing[@]}"
for p in "${missing_src[@]}"; do
  "$PY" -m pip wheel -q --no-deps -w "$DIR" "$p"
done
# DeepSpeed's ops JIT-build on the node from the sources its wheel carries.
ds=$(wheel_of deepspeed==0.19.8)
files=$("$PY" -m zipfile -l "$ds")
for f in deepspeed/ops/csrc/adam/multi_tensor_adam.cu deepspeed/ops/op_builder/fused_adam.py; do
  grep -q "^$f " <<<"$files" || { echo "[gpu_wheels] error: $ds lacks $f" >&2; exit 1; }
done
total=$(du -cb "$DIR"/*.whl | tail -1 | cut -f1)
echo "[gpu_wheels] $(ls "$DIR"/*.whl | wc -l) wheels, $((total / 1048576)) MiB in $DIR"
if [ "$total" -gt $((64 * 1048576)) ]; then
  echo "[gpu_wheels] error: more than 64 MiB; drop what the node already has" >&2
  exit 1
fi
