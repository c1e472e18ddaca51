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
	@echo "setup: installing into $(VENV) (log: $(VENV)/install.log)"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@{ $(PY) -m pip install --upgrade pip && $(PY) -m pip install "torch==2.13.0" && $(PY) -m pip install -e ".[test]"; } \
		> $(VENV)/install.log 2>&1 || { tail -20 $(VENV)/install.log; echo "setup: pip install failed; see $(VENV)/install.log" >&2; exit 1; }
	@touch $@

setup: $(VENV)/.installed ## create .venv and install the project (done by every target)

ACCELERATE_CONFIG ?= launch/accelerate/single_node.yaml
# NPROC=1 is the plain single-process path; more processes go through `accelerate launch`.
ifeq ($(NPROC),1)
RUN := $(PY) -m train
else
RUN := $(PY) launch/check_nproc.py $(NPROC) && $(VENV)/bin/accelerate launch --config_file $(ACCELERATE_CONFIG) --num_processes $(NPROC) -m train
endif

train: $(VENV)/.installed ## run SFT -> DPO -> eval on the embedded default (ARGS="beta.value=0.2", NPROC=2)
	$(RUN) $(ARGS)

dry-run: $(VENV)/.installed ## build everything and stop before training
	$(PY) -m train dry_run=true $(ARGS)

test: $(VENV)/.installed ## all tests: config, pure functions, CPU pipeline runs
	$(PY) -m pytest tests $(ARGS)

test-fast: $(VENV)/.installed ## config and pure-function tests only (seconds)
	$(PY) -m pytest tests -m "not slow and not multiproc and not slurm" $(ARGS)

clean: ## remove outputs/ (runs, SFT cache, built models); keeps .venv
	rm -rf outputs
