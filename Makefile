# The menu. `make help` lists the targets; every target sets up .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
ARGS ?=
NPROC ?= 1
export PYTHONUNBUFFERED := 1
export TOKENIZERS_PARALLELISM := false

.DEFAULT_GOAL := help
NODES ?= 1
NPROC_PER_NODE ?= 1
BETAS ?= 0.05,0.1,0.5
TRIALS ?= 8
LR ?=
WAIT ?=
ANNOTATE_PORT ?= 8089
.PHONY: help setup train dry-run test test-fast clean sweep sweep-slurm search search-slurm submit slurm-up slurm-down annotate-up annotate-down bench gpu-check plan

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'
	@echo "  variables: ARGS=\"<hydra overrides>\" NPROC=<processes> ACCELERATE_CONFIG=<accelerate config file for NPROC=2+> NODES= NPROC_PER_NODE= BETAS= TRIALS= LR= WAIT=1 GPUS_PER_NODE= GPU_MEMORY_GB= ANNOTATE_PORT=8089"

# torch first, pinned: on this CPU machine pip takes the local CPU build; on a GPU cluster the CUDA one.
$(VENV)/.installed: pyproject.toml
	@echo "setup: installing into $(VENV) (log: $(VENV)/install.log)"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@{ $(PY) -m pip install --upgrade pip && $(PY) -m pip install "torch==2.13.0" && $(PY) -m pip install -e ".[test]"; } \
		> $(VENV)/install.log 2>&1 || { tail -20 $(VENV)/install.log; echo "setup: pip install failed; see $(VENV)/install.log" >&2; exit 1; }
	@touch $@

setup: $(VENV)/.installed ## create .venv and install the project (done by every target)

# The accelerate config of NPROC>1 runs; check_nproc.py refuses one the run would refuse, before any process starts.
ACCELERATE_CONFIG ?= launch/accelerate/single_node.yaml
# NPROC=1 is the plain single-process path; more processes go through `accelerate launch`.
ifeq ($(NPROC),1)
RUN := $(PY) -m train
else
RUN := $(PY) launch/check_nproc.py $(NPROC) $(ACCELERATE_CONFIG) && $(VENV)/bin/accelerate launch --config_file $(ACCELERATE_CONFIG) --num_processes $(NPROC) -m train
endif

train: $(VENV)/.installed ## run SFT -> DPO -> eval on the embedded default (ARGS="beta.value=0.2", NPROC=2)
	$(RUN) $(ARGS)

dry-run: $(VENV)/.installed ## build everything and stop before training
	$(PY) -m train dry_run=true $(ARGS)

sweep: $(VENV)/.installed ## beta sweep, one run after another (BETAS=0.05,0.1,0.5); SFT once; prints report:
	$(PY) -m train -m beta.value=$(BETAS) $(ARGS)

sweep-slurm: $(VENV)/.installed ## beta sweep on SLURM, one job per beta (BETAS=..., NODES=...); SFT once first
	$(PY) -m train -m hydra/launcher=slurm hydra.launcher.nodes=$(NODES) nproc_per_node=$(NPROC_PER_NODE) \
		stage=sft 'hydra.sweep.dir=$${output_root}/sweeps/$${experiment}/.sft' $(ARGS)
	$(PY) -m train -m hydra/launcher=slurm hydra.launcher.nodes=$(NODES) nproc_per_node=$(NPROC_PER_NODE) \
		beta.value=$(BETAS) $(ARGS)

# Optuna's search space for the learning rate, when LR=<low>,<high> is given (log scale, as beta's).
LR_SEARCH := $(if $(LR),'dpo.args.learning_rate=tag(log,interval($(LR)))')
SEARCH := -m hydra/sweeper=beta_search hydra.sweeper.n_trials=$(TRIALS) $(LR_SEARCH)

search: $(VENV)/.installed ## Bayesian search over beta (Optuna, TRIALS=8; LR=1e-4,1e-2 searches it too); SFT once
	$(PY) -m train $(SEARCH) $(ARGS)

search-slurm: $(VENV)/.installed ## the search on SLURM: one SFT job, then batches of hydra.sweeper.n_jobs trial jobs
	$(PY) -m train -m hydra/launcher=slurm hydra.launcher.nodes=$(NODES) nproc_per_node=$(NPROC_PER_NODE) \
		stage=sft 'hydra.sweep.dir=$${output_root}/sweeps/$${experiment}/.sft' $(ARGS)
	$(PY) -m train $(SEARCH) hydra/launcher=slurm hydra.launcher.nodes=$(NODES) nproc_per_node=$(NPROC_PER_NODE) $(ARGS)

submit: $(VENV)/.installed ## one pipeline run as a SLURM job over NODES nodes (NPROC_PER_NODE, ARGS, WAIT=1)
	$(PY) -m launch.submit --nodes $(NODES) --nproc-per-node $(NPROC_PER_NODE) $(if $(WAIT),--wait) -- $(ARGS)

slurm-up: ## start the local 2-node SLURM cluster (installs Debian's slurm + munge if missing)
	@bash launch/slurm/cluster.sh up

slurm-down: ## stop the local SLURM cluster
	@bash launch/slurm/cluster.sh down

annotate-up: ## start Label Studio for human labels at 127.0.0.1:ANNOTATE_PORT (installs it once; prints the token)
	@ANNOTATE_PORT=$(ANNOTATE_PORT) bash launch/annotate/server.sh up

annotate-down: ## stop that Label Studio (its data stays in outputs/annotate)
	@ANNOTATE_PORT=$(ANNOTATE_PORT) bash launch/annotate/server.sh down

bench: $(VENV)/.installed ## throughput vs TRL's DPO defaults: table, then one JSON line (ARGS=--quick: seconds)
	$(PY) launch/bench.py $(ARGS)

GPUS_PER_NODE ?= 1
GPU_MEMORY_GB ?= 80
plan: $(VENV)/.installed ## will it fit? per-GPU memory of ARGS on NODES x GPUS_PER_NODE x GPU_MEMORY_GB; the fastest that fits
	$(PY) -m train.plan $(ARGS) nodes=$(NODES) gpus_per_node=$(GPUS_PER_NODE) gpu_memory_gb=$(GPU_MEMORY_GB)

gpu-check: $(VENV)/.installed ## DPO step of a ~0.5B model in bf16 on one GPU: tokens/s, MFU (no GPU: says so)
	$(PY) launch/gpu_check.py $(ARGS)

# Two pytest-xdist workers: most tests wait on a subprocess, a SLURM job or a server; the tests of one shared
# server (the SLURM cluster, Label Studio) stay on one worker (--dist loadgroup, tests/conftest.py).
TEST_WORKERS ?= 2
test: $(VENV)/.installed ## all tests: config, pure functions, CPU pipeline runs (TEST_WORKERS=2 in parallel)
	$(PY) -m pytest tests -n $(TEST_WORKERS) --dist loadgroup --durations=25 $(ARGS)

test-fast: $(VENV)/.installed ## untagged tier: layers, config, refusals, pure functions, one in-process run (~6 min)
	$(PY) -m pytest tests -n $(TEST_WORKERS) --dist loadgroup -m "not slow and not multiproc and not slurm and not annotate" $(ARGS)

clean: ## remove outputs/ (runs, SFT cache, built models); keeps .venv
	rm -rf outputs
