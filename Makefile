# make demo: set up .venv, install, evaluate the committed default Sudoku model (vanilla / top_prob / margin).
# make test: set up .venv, install, run ruff and mypy (make lint), build the docs (make docs), then the default test
# suite (no GPU, no TensorRT, no slow tests).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# torch 2.13.0 is pinned here: on these machines its CPU wheel lies on disk (any other version downloads GBs).
# GPU users: see docs/guide/gpu.md.
TORCH ?= torch==2.13.0

.PHONY: demo test lint docs test-slow test-gpu clean setup

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[dev,serve,cpu,text]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	OMP_WAIT_POLICY=PASSIVE $(BIN)/unmask eval --model models/sudoku-default --task sudoku --generate 120 --split test \
		--seed 2025 --strategies vanilla,top_prob,margin --steps 50 --json results/demo.json

# Lint and type checks (ruff, mypy; configured in pyproject.toml). mypy needs the folders under their package names:
# build/typecheck/unmask/{core,export,plugins} link to them (see [tool.mypy]).
lint: $(STAMP)
	$(BIN)/ruff check core export plugins package tools bench
	mkdir -p build/typecheck/unmask
	for d in core export plugins; do ln -sfn ../../../$$d build/typecheck/unmask/$$d; done
	ln -sfn ../../../package/__init__.py build/typecheck/unmask/__init__.py
	$(BIN)/mypy

# The docs site (mkdocs.yml): warnings are errors (broken links, anchors, API reference); the site goes to site/.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

test: lint docs
	$(BIN)/python -m pytest -q tests

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow tests

# The GPU tests need onnxruntime-gpu (it replaces the CPU wheel: only one may be installed) and TensorRT.
test-gpu: $(STAMP)
	$(BIN)/python -m pip uninstall -q -y onnxruntime
	$(BIN)/python -m pip install -q -e ".[dev,serve,gpu,trt]"
	$(BIN)/python -m pytest -q -m "gpu or tensorrt" tests

clean:
	rm -rf $(VENV) build site *.egg-info
