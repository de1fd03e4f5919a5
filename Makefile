# Quick start: `make run` (set up and serve the bundled model), `make test` (the whole suite).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup run test lint bench bench-peers model

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

# Rebuild agent/data/tiny (needs the build tools: torch==2.13.0, transformers, onnx, ...).
model:
	$(PYTHON) -m venv .venv-build
	.venv-build/bin/pip install --quiet -e ".[build-models]"
	.venv-build/bin/python scripts/build_tiny_model.py

bench: setup
	$(BIN)/python scripts/bench/local.py

# The peer benchmark (scripts/bench/RESULTS.md): llama-cpp-python is compiled here. Its
# native build can crash with SIGILL on CPUs with AMX, so those get an explicit ISA list.
LLAMA_AMX_SAFE := -DGGML_NATIVE=OFF -DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON \
	-DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF
bench-peers: setup
	$(BIN)/python -c "import llama_cpp" 2>/dev/null || { \
		if grep -qw amx_tile /proc/cpuinfo; then export CMAKE_ARGS="$(LLAMA_AMX_SAFE)"; fi; \
		$(BIN)/pip install --no-cache-dir -e ".[bench-peers]"; }
	$(BIN)/python scripts/bench/peers.py $(ARGS)
