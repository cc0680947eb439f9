# The two commands of README.md:
#   make run    set up (first time) and run solarbot on the embedded defaults
#   make test   set up (first time) and run ruff, mypy and the whole test suite
#
# CPU machines get the CPU build of torch from TORCH (pinned: an unpinned torch pulls a multi-GB
# CUDA build). On a GPU host install your CUDA torch into .venv first, or run with TORCH=torch.

PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: run test lint typecheck pytest bench gpu-deps clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

run: $(VENV)/.installed
	$(BIN)/solarbot run $(if $(ENGINE),--engine $(ENGINE),)

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(VENV)/.installed
	$(BIN)/mypy

pytest: $(VENV)/.installed
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test: lint typecheck pytest

bench: $(VENV)/.installed
	$(BIN)/python bench/pipeline.py

# The pure-Python packages bench/gpu_session.sh needs beyond the GPU box's torch + transformers
# (the GPU memory gauges are scraped through prometheus_client): carried there as .gpu-deps.
gpu-deps: $(VENV)/.installed
	rm -rf .gpu-deps
	$(BIN)/python -m pip install --quiet --no-deps --target .gpu-deps prometheus-client

clean:
	rm -rf $(VENV) .gpu-deps .mypy_cache .ruff_cache .pytest_cache
