# ecg-monitor developer commands. `make test` and `make demo` are the README's two commands.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
RUN_VENV := .venv-run
BIN := $(VENV)/bin
# The CPU wheel of torch; a bare `torch` would pull a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0

.PHONY: help venv test lint format demo models models-ecg5000 models-stream models-mitdb bench bench-calibration clean

help:
	@echo "make test    - create .venv (train+dev extras) and run lint-free test suite"
	@echo "make lint    - ruff + mypy --strict on monitor/ and training/"
	@echo "make demo    - runtime-only environment (no torch) and the one-command demo"
	@echo "make models  - rebuild the bundled models under models/ with ecg-train"
	@echo "make models-stream - rebuild models/stream-synthetic-dense.onnx (synthetic stream)"
	@echo "make models-mitdb  - rebuild models/mitdb-ds1-dense.onnx (needs ../shared/data/mitdb)"
	@echo "make bench   - model-only and end-to-end benchmarks (see BENCHMARKS.md)"

# pip shows what it downloads and installs (a fresh environment takes a while); PIP_FLAGS=-q
# hides it again.
PIP_FLAGS ?= --progress-bar on

# Full development environment: torch first (pinned CPU wheel), then the project.
$(BIN)/.installed: pyproject.toml
	@echo "==> $(VENV): creating the development environment (tests, training, demo)"
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "==> $(VENV): upgrading pip"
	$(BIN)/python -m pip install -q --upgrade pip
	@echo "==> $(VENV): installing $(TORCH_SPEC) (the largest download)"
	$(BIN)/python -m pip install $(PIP_FLAGS) "$(TORCH_SPEC)"
	@echo "==> $(VENV): installing ecg-monitor from this checkout with the train, dev and demo extras"
	$(BIN)/python -m pip install $(PIP_FLAGS) -e '.[train,dev,demo]'
	touch $@
	@echo "==> $(VENV): ready"

venv: $(BIN)/.installed

test: $(BIN)/.installed
	@echo "==> pytest (starts its own mosquitto brokers; tests needing ../shared/data skip without it)"
	$(BIN)/python -m pytest

lint: $(BIN)/.installed
	$(BIN)/ruff check monitor training tests bench tools
	$(BIN)/ruff format --check monitor training tests bench tools
	$(BIN)/mypy

format: $(BIN)/.installed
	$(BIN)/ruff format monitor training tests bench tools
	$(BIN)/ruff check --fix monitor training tests bench tools

# The daemon host's environment: numpy, onnxruntime, paho-mqtt, structlog, prometheus-client (+ amqtt for
# the embedded broker). No torch, no onnx.
$(RUN_VENV)/.installed: pyproject.toml
	@echo "==> $(RUN_VENV): creating the runtime environment (no torch)"
	test -x $(RUN_VENV)/bin/python || $(PYTHON) -m venv $(RUN_VENV)
	@echo "==> $(RUN_VENV): upgrading pip"
	$(RUN_VENV)/bin/python -m pip install -q --upgrade pip
	@echo "==> $(RUN_VENV): installing ecg-monitor from this checkout: numpy, onnxruntime, paho-mqtt, structlog, amqtt"
	$(RUN_VENV)/bin/python -m pip install $(PIP_FLAGS) -e '.[demo]'
	touch $@
	@echo "==> $(RUN_VENV): ready"

demo: $(RUN_VENV)/.installed
	@echo "==> ecg-monitor demo $(DEMO_ARGS)"
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
	$(MAKE) models-ecg5000

# The default windows model (models/MODEL_CARD.md): the vae recipe on the ECG5000 TRAIN
# normals, cross-conformal calibration (every normal beat scored out of fold).
ECG5000_TRAIN ?= /work/shared/data/ECG5000/ECG5000_TRAIN.arff
ECG5000_MODEL := models/ecg5000-vae.onnx
models-ecg5000: $(BIN)/.installed
	rm -rf runs/ecg5000-vae
	$(BIN)/ecg-train fit --config configs/train-vae.toml --data ucr:$(ECG5000_TRAIN) --seed 0 --device cpu --threads 1 --out runs/ecg5000-vae --quiet --no-plots
	$(BIN)/ecg-train export runs/ecg5000-vae --out $(ECG5000_MODEL)
	$(BIN)/ecg-train evaluate $(ECG5000_MODEL) --data ucr:$(ECG5000_TRAIN) --json models/ecg5000-vae.metrics.json

# Repeated nested cross-validation of the calibration (BENCHMARKS.md, "Calibration").
bench-calibration: $(BIN)/.installed
	nice -n 10 $(BIN)/python bench/calibration.py cv --data ucr:$(ECG5000_TRAIN) --variants dense --repeats 1 --json runs/cv-dense.json
	$(BIN)/python bench/calibration.py report runs/cv-*.json --benchmarks BENCHMARKS.md

# Stream models (beats cut by monitor/frontend; models/MODEL_CARD.md). The synthetic one needs
# no data; the MIT-BIH one trains on DS1 with leave-records-out CV and out-of-fold calibration.
MITDB ?= ../shared/data/mitdb
# Chosen by leave-records-out CV on DS1 (BENCHMARKS.md, "MIT-BIH inter-patient").
MITDB_RECIPE ?= --variant dense --option lam=0.5 --option hidden=128 --latent-dim 8 --epochs 15 --folds 6
models-stream: $(BIN)/.installed
	rm -rf runs/stream-synthetic-dense
	$(BIN)/ecg-train fit --data stream-synthetic:30 --seed 0 --threads 1 --out runs/stream-synthetic-dense --quiet --no-plots
	$(BIN)/ecg-train export runs/stream-synthetic-dense --out models/stream-synthetic-dense.onnx
	$(BIN)/ecg-train evaluate models/stream-synthetic-dense.onnx --data stream-synthetic:30 --seed 1 --json models/stream-synthetic-dense.metrics.json

models-mitdb: $(BIN)/.installed
	rm -rf runs/mitdb-ds1-dense
	$(BIN)/ecg-train fit --data mitdb:$(MITDB) --records DS1 $(MITDB_RECIPE) --seed 0 --threads 1 --out runs/mitdb-ds1-dense --quiet --no-plots
	$(BIN)/ecg-train export runs/mitdb-ds1-dense --out models/mitdb-ds1-dense.onnx
	cp runs/mitdb-ds1-dense/cv.json models/mitdb-ds1-dense.cv.json

bench: $(BIN)/.installed
	$(BIN)/python bench/model_throughput.py
	$(BIN)/python bench/e2e.py

clean:
	rm -rf $(VENV) $(RUN_VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis build *.egg-info
