# CPU environment: a .venv in the checkout with exact pins (requirements/cpu.txt).
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv lint test bench demo clean

$(STAMP): requirements/cpu.txt pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "needs $(PYTHON) (set PYTHON=...)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements/cpu.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

venv: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check megatron_fork recipes tests tools
	$(VENV)/bin/ruff format --check megatron_fork recipes tests tools

test: lint
	$(PY) -m pytest -q tests

bench: $(STAMP)
	$(PY) tools/bench_logprob_entropy.py

demo:
	@echo "make demo is not built yet: the end-to-end CPU RL run (SFT warm start + RL with the"
	@echo "top-20% forking-token loss, report in runs/demo/) is the open RL-loop issue."
	@exit 2

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
