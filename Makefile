# ecg-monitor developer commands. `make test` and `make demo` are the README's two commands.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
RUN_VENV := .venv-run
BIN := $(VENV)/bin
# The CPU wheel of torch; a bare `torch` would pull a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0

.PHONY: help venv test lint format demo models bench clean

help:
	@echo "make test    - create .venv (train+dev extras) and run lint-free test suite"
	@echo "make lint    - ruff + mypy --strict on monitor/ and training/"
	@echo "make demo    - runtime-only environment (no torch) and the one-command demo"
	@echo "make models  - rebuild the bundled model under models/ with ecg-train"
	@echo "make bench   - model-only and end-to-end benchmarks (see BENCHMARKS.md)"

# Full development environment: torch first (pinned CPU wheel), then the project.
$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e '.[train,dev,demo]'
	touch $@

venv: $(BIN)/.installed

test: $(BIN)/.installed
	$(BIN)/python -m pytest

lint: $(BIN)/.installed
	$(BIN)/ruff check monitor training tests bench
	$(BIN)/ruff format --check monitor training tests bench
	$(BIN)/mypy

format: $(BIN)/.installed
	$(BIN)/ruff format monitor training tests bench
	$(BIN)/ruff check --fix monitor training tests bench

# The daemon host's environment: numpy, onnxruntime, paho-mqtt, structlog, prometheus-client (+ amqtt for
# the embedded broker). No torch, no onnx.
$(RUN_VENV)/.installed: pyproject.toml
	test -x $(RUN_VENV)/bin/python || $(PYTHON) -m venv $(RUN_VENV)
	$(RUN_VENV)/bin/python -m pip install -q --upgrade pip
	$(RUN_VENV)/bin/python -m pip install -q -e '.[demo]'
	touch $@

demo: $(RUN_VENV)/.installed
	$(RUN_VENV)/bin/ecg-monitor demo $(DEMO_ARGS)

# The bundled model (models/MODEL_CARD.md): the project's own training command on the
# synthetic generator, exported with its threshold, then evaluated on held-out beats.
BUNDLED := models/ecg-synthetic-dense.onnx
MODEL_RECIPE := --variant dense --latent-dim 8 --fpr 0.002 --calibration quantile --data synthetic:20000 --seed 0
models: $(BIN)/.installed
	rm -rf runs/bundled-dense
	$(BIN)/ecg-train fit $(MODEL_RECIPE) --device cpu --threads 1 --out runs/bundled-dense --quiet
	$(BIN)/ecg-train export runs/bundled-dense --out $(BUNDLED)
	$(BIN)/ecg-train evaluate $(BUNDLED) --data synthetic:20000 --json models/ecg-synthetic-dense.metrics.json

bench: $(BIN)/.installed
	$(BIN)/python bench/model_throughput.py
	$(BIN)/python bench/e2e.py

clean:
	rm -rf $(VENV) $(RUN_VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis build *.egg-info
