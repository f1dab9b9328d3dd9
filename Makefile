# CPU environment: a .venv in the checkout with exact pins (requirements/cpu.txt).
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv lint test bench demo ablation clean

$(STAMP): requirements/cpu.txt pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "needs $(PYTHON) (set PYTHON=...)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements/cpu.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

venv: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check megatron_fork recipes checkpoints_convert tests tools
	$(VENV)/bin/ruff format --check megatron_fork recipes checkpoints_convert tests tools

test: lint
	$(PY) -m pytest -q --durations=15 tests

bench: $(STAMP)
	$(PY) tools/bench_logprob_entropy.py

# Warm start + RL (top 20%) on the tiny Qwen3; report in runs/demo/ (override: make demo ARGS=...).
demo: $(STAMP)
	$(PY) tools/demo.py $(ARGS)

# 4 strategies x 3 seeds from one base model; table in runs/ablation/ (see README).
ablation: $(STAMP)
	$(PY) tools/ablation.py $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
