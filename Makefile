# flchain-flwr: make install | run | test | test-nightly | bench | lint
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
APPS   := apps/flchain_cnn

# A separate venv for Flower's nightly build (see test-nightly).
NIGHTLY       := .venv-nightly
NIGHTLY_BIN   := $(NIGHTLY)/bin
NIGHTLY_STAMP := $(NIGHTLY)/.installed

.PHONY: install data run test test-nightly bench lint clean

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

# Not part of `make test`: the suite, less the e2e tests, against the newest
# flwr-nightly (it imports as `flwr`) in .venv-nightly. The project installs with
# its usual pins first (torch through constraints.txt), then flwr is swapped for
# the nightly, upgraded to the newest one on every run. Both distributions write
# the same `flwr` package, so never keep the two installed at once.
$(NIGHTLY_STAMP): pyproject.toml constraints.txt $(APPS:%=%/pyproject.toml)
	$(PYTHON) -m venv $(NIGHTLY)
	$(NIGHTLY_BIN)/python -m pip install --quiet --upgrade pip
	$(NIGHTLY_BIN)/python -m pip uninstall --quiet --yes flwr-nightly
	$(NIGHTLY_BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]" $(APPS:%=-e %)
	$(NIGHTLY_BIN)/python -m pip uninstall --quiet --yes flwr
	touch $(NIGHTLY_STAMP)

test-nightly: $(NIGHTLY_STAMP)
	$(NIGHTLY_BIN)/python -m pip install --quiet --upgrade --pre -c constraints.txt \
		"flwr-nightly[simulation]"
	@$(NIGHTLY_BIN)/python -m pip show flwr-nightly | grep -E '^(Name|Version):'
	$(NIGHTLY_BIN)/python -m pytest -m "not e2e"

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
	rm -rf $(VENV) $(NIGHTLY) .flwr .pytest_cache .mypy_cache .ruff_cache .hypothesis
