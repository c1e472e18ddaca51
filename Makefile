# The menu. `make help` lists the targets; every target sets up .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
ARGS ?=
NPROC ?= 1
export PYTHONUNBUFFERED := 1
export TOKENIZERS_PARALLELISM := false

.DEFAULT_GOAL := help
.PHONY: help setup train dry-run test test-fast clean

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'
	@echo "  variables: ARGS=\"<hydra overrides>\" NPROC=<processes>"

# torch first, pinned: on this CPU machine pip takes the local CPU build; on a GPU cluster the CUDA one.
$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
	@$(PY) -m pip install -q "torch==2.13.0" 2>&1 | grep -v "^WARNING: Location" || true
	@$(PY) -m pip install -q -e ".[test]" 2>&1 | grep -v "^WARNING: Location" || true
	@$(PY) -c "import trl, deepspeed, hydra, wandb" 2>/dev/null || { echo "setup: install failed; see pip output above" >&2; exit 1; }
	@touch $@

setup: $(VENV)/.installed ## create .venv and install the project (done by every target)

train: $(VENV)/.installed ## run SFT -> DPO -> eval on the embedded default (ARGS="beta.value=0.2", NPROC=2)
	$(PY) -m train $(ARGS)

dry-run: $(VENV)/.installed ## build everything and stop before training
	$(PY) -m train dry_run=true $(ARGS)

test: $(VENV)/.installed ## all tests: config, pure functions, CPU pipeline runs
	$(PY) -m pytest tests $(ARGS)

test-fast: $(VENV)/.installed ## config and pure-function tests only (seconds)
	$(PY) -m pytest tests -m "not slow and not multiproc and not slurm" $(ARGS)

clean: ## remove outputs/ (runs, SFT cache, built models); keeps .venv
	rm -rf outputs
