# Two commands on a fresh machine:  `make demo` (the main job)  and  `make test`.
# Each creates .venv and installs what it needs; later runs reuse it.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The tested pair; pip takes them from a local wheel cache where one is configured.
TORCH  ?= torch==2.14.1 torchvision==0.29.1
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast lint cpp clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e ".[dev,dist,openvino]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/subtune-edge demo --out demo-out

# the whole suite, on two pytest-xdist workers (files stay whole on one worker: their fixtures are built once)
test: lint
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

# the edit loop: everything but the tests marked slow (C++ builds, the demo, trained INT8 tasks, processes)
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile -m "not slow"

# ruff, then the import-linter contracts in pyproject.toml (the layers of ARCHITECTURE.md)
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports --no-logo --no-cache

cpp: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" examples/cpp/scripts/build_ci.sh

clean:
	rm -rf $(VENV) demo-out examples/cpp/build examples/cpp/build-ci
