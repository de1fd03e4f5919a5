# Quick start: `make run` (set up and serve the bundled model), `make test` (the whole suite).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup run test lint bench model

$(BIN)/edge-agent: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

setup: $(BIN)/edge-agent

run: setup
	$(BIN)/edge-agent serve $(ARGS)

test: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest

# Rebuild models/tiny (needs the build tools: torch==2.13.0, transformers, onnx, ...).
model:
	$(PYTHON) -m venv .venv-build
	.venv-build/bin/pip install --quiet -e ".[build-models]"
	.venv-build/bin/python scripts/build_tiny_model.py

bench: setup
	$(BIN)/python scripts/bench/local.py
