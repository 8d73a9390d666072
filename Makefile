# The two commands of the README: `make demo` and `make test`. Both create/update .venv first.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)
DEMO_DIR ?= runs/demo
PYTEST_ARGS ?=

.PHONY: venv test test-slurm demo lint format clean-demo

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@rm -f $(VENV)/.installed-* && touch $(STAMP)

venv: $(STAMP)

# The default suite (no Slurm cluster needed). pytest's exit 5 (no tests collected) counts as failure.
test: venv
	$(PY) -m pytest -m "not slurm" $(PYTEST_ARGS)

# Slurm integration tests: brings a local 2-node cluster up (apt, daemons), runs them, tears it down.
test-slurm: venv
	$(PY) -m pytest -m slurm $(PYTEST_ARGS)

demo: venv
	$(PY) -m cxrdist.run.demo --out $(DEMO_DIR)

# ruff, then the import layers (the import-linter contract in pyproject.toml; tests/test_imports.py checks the rest).
lint: venv
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check . && $(VENV)/bin/lint-imports

format: venv
	$(VENV)/bin/ruff format . && $(VENV)/bin/ruff check --fix .

clean-demo:
	rm -rf $(DEMO_DIR)
