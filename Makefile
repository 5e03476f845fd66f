# Two commands on a fresh machine: `make study` and `make test`. Everything else is optional.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Stage commands call `python`; put the venv first so dvc runs them with our interpreter.
RUN    := PATH="$(CURDIR)/$(BIN):$$PATH"

.DEFAULT_GOAL := help
.PHONY: help setup study test test-fast bench ui dashboard browser-deps postgres-deps clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "latentstudy needs Python >= 3.11, found " + sys.version.split()[0])'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

setup: $(STAMP) ## Create .venv and install latentstudy with its pinned dependencies

study: $(STAMP) ## Set up and run the default study (dvc repro); open reports/index.html afterwards
	@test -d .git || git init --quiet
	@test -d .dvc || $(BIN)/dvc init --quiet
	$(RUN) $(BIN)/dvc repro
	@$(RUN) $(BIN)/dvc plots show -o reports/dvc_plots >/dev/null && echo "DVC plots: reports/dvc_plots/index.html"
	@echo "Trials: make ui (MLflow)   Rerun: edit params.yaml, then make study   Your data: latentstudy run FILE"
	@$(BIN)/latentstudy answers

test: $(STAMP) browser-deps ## Set up and run the whole test suite
	$(RUN) $(BIN)/python -m pytest

test-fast: $(STAMP) ## Unit tests only (no dvc repro, browser or PostgreSQL)
	$(RUN) $(BIN)/python -m pytest -m 'not e2e and not browser and not postgres'

bench: $(STAMP) ## Benchmark the training engine and the search orchestration; writes reports/bench.json
	$(RUN) $(BIN)/python benchmarks/engine_bench.py --out reports/bench.json

ui: $(STAMP) ## MLflow UI on the study's runs (http://127.0.0.1:5000); prints each experiment's runs-table link
	$(BIN)/latentstudy ui

dashboard: $(STAMP) ## optuna-dashboard on the study's Optuna storage (http://127.0.0.1:8080/dashboard/)
	$(BIN)/latentstudy dashboard

browser-deps: ## Install Debian's chromium + chromium-driver for the browser tests (where apt and root exist)
	@sh scripts/install-system-deps.sh chromium

postgres-deps: ## Install Debian's postgresql for the scale-out tests (where apt and root exist)
	@sh scripts/install-system-deps.sh postgresql

clean: ## Remove generated data, models, reports and the local MLflow/Optuna stores (keeps .venv)
	rm -rf data/prepared models reports/pca reports/search reports/evaluate reports/figures reports/plots \
	       reports/index.html reports/table.csv reports/metrics.json reports/bench.json \
	       mlflow.db mlartifacts .latentstudy dvc.lock
