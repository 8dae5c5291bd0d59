# Visiobook delivery pipelines. `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PY_SOURCES := plugins dags tests benchmarks

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: requirements.txt requirements-dev.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $@

install: $(VENV)/.installed ## create the venv and install everything (runtime + dev)

lint: install ## ruff (lint + format check) and mypy
	$(BIN)/ruff check $(PY_SOURCES)
	$(BIN)/ruff format --check $(PY_SOURCES)
	$(BIN)/mypy

# The suite runs its test files on TEST_WORKERS parallel workers (pytest-xdist, one file per
# worker at a time), the longest files first (their `duration` mark, tests/conftest.py): most of
# an end-to-end test's time is spent waiting on Airflow, not on the CPU.
TEST_WORKERS ?= 6
XDIST := --dist loadfile --no-loadscope-reorder

test: lint ## lint, then the whole test suite (starts Docker, a registry, Prometheus, Alertmanager, Airflow)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/pytest -p no:cacheprovider -n $(TEST_WORKERS) $(XDIST) --durations=25

test-fast: install ## unit tests only (no real services)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/pytest -p no:cacheprovider -m "not e2e" -n 2 $(XDIST)

run: ## set up everything on this machine and start Airflow with the local profile (scripts/run-local.sh)
	bash scripts/run-local.sh start

stop: ## stop Airflow, the registry, demo containers and the Docker engine started by `make run`
	bash scripts/run-local.sh stop

schema: install ## regenerate include/schemas/*.schema.json from the catalog models
	PYTHONPATH=plugins $(BIN)/python -m delivery.cli schema

validate: install ## validate the service catalog
	PYTHONPATH=plugins $(BIN)/python -m delivery.cli validate

bench: install ## run the benchmarks (see BENCHMARKS.md)
	PATH="$(CURDIR)/$(BIN):$$PATH" PYTHONPATH=plugins $(BIN)/python benchmarks/parse_time.py

.PHONY: help install lint test test-fast run stop schema validate bench
