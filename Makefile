# flchain-flwr: make install | run | test | bench | lint
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
APPS   := apps/flchain_cnn

.PHONY: install data run test bench lint clean

# torch is pinned through constraints.txt to the local CPU build; an unpinned torch
# would pull several GB of CUDA wheels.
$(STAMP): pyproject.toml constraints.txt $(APPS:%=%/pyproject.toml)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]" $(APPS:%=-e %)
	touch $(STAMP)

install: $(STAMP)

# The main job: a real federated run of the digits app with `flwr run` in Ray
# simulation (10 SuperNodes, project-local FLWR_HOME in .flwr/), then the local
# SuperLink it started is stopped by PID.
run: install
	$(BIN)/python -m flchain_flwr.sim.local_run apps/flchain_cnn \
		--flwr-home .flwr --num-supernodes 10

test: install
	$(BIN)/python -m pytest

# Debian's Fashion-MNIST IDX files, for the benchmarks (apt-get needs root; CI is root).
data:
	@if dpkg -s dataset-fashion-mnist >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; \
	else \
		echo "run: sudo apt-get install dataset-fashion-mnist"; exit 1; \
	fi

bench: install data
	$(BIN)/python benchmarks/async_vs_sync.py
	$(BIN)/python benchmarks/ledger.py
	$(BIN)/python benchmarks/compression.py
	$(BIN)/python benchmarks/robustness.py
	$(BIN)/python benchmarks/deployment.py

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .flwr .pytest_cache .mypy_cache .ruff_cache .hypothesis
