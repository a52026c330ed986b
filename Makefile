# One-command set-up, tests and the CPU demo. Everything runs inside .venv.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.am3-setup-stamp
MODELS := $(CURDIR)/$(VENV)/am3-tiny-models

.PHONY: setup lint test test-fast bench demo miniature clean-venv

setup: $(STAMP)

# Rebuilt only when the pins or the package metadata change; otherwise `make setup` is a no-op.
$(STAMP): pyproject.toml requirements/cpu.txt requirements/cpu-lock.txt Makefile tests/eval/ensure_chromium.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade "pip>=24"
	$(PIP) install -q -r requirements/cpu.txt
	$(PIP) install -q -c requirements/cpu-lock.txt -e ".[cpu]"
	$(PY) -m am3_verl.local.tiny_models --output_dir $(MODELS) --force
	bash tests/eval/ensure_chromium.sh
	$(PY) -c "import verl, am3_verl.plugin as p; p.assert_loaded()"
	touch $(STAMP)

# ruff (pinned in the cpu extra; configured in pyproject.toml): lint, and the formatting check.
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: setup lint
	AM3_TINY_MODELS=$(MODELS) $(PY) -m pytest -q --durations=15

test-fast: setup
	AM3_TINY_MODELS=$(MODELS) $(PY) -m pytest -q -m "not slow"

bench: setup
	for b in tests/benchmarks/bench_*.py; do AM3_TINY_MODELS=$(MODELS) $(PY) $$b || exit 1; done

demo: setup
	AM3_TINY_MODELS=$(MODELS) $(PY) -m am3_verl.demo --output_dir outputs/demo --judge heuristic

# The paper's experiment in miniature (3 seeds x am3_grpo, grpo, min_mean); see README "Does it learn?".
miniature: setup
	$(PY) -m am3_verl.miniature --output_dir outputs/miniature

clean-venv:
	rm -rf $(VENV)
