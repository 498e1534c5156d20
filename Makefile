# Two commands from a fresh machine: `make demo` and `make test`. Each does its own set-up.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
FMNIST_DIR ?= /usr/share/datasets/fashion-mnist
WORK_DIR ?= runs

.PHONY: demo test test-fast venv data benchmark clean-venv

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@# setuptools warns about editable installs on every set-up even with -q; the warning is noise here
	PYTHONWARNINGS='ignore:Editable installation' $(PY) -m pip install -q -e '.[test,onnx]'
	@touch $@

# Fashion-MNIST (real data) comes from Debian's dataset-fashion-mnist package.
data:
	@if [ -f $(FMNIST_DIR)/train-images-idx3-ubyte.gz ]; then \
	  echo "Fashion-MNIST found in $(FMNIST_DIR)"; \
	else \
	  echo "Installing Debian package dataset-fashion-mnist"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq dataset-fashion-mnist; \
	fi

# The whole suite under TensorFlow with its oneDNN kernels on (as TensorFlow runs by itself on
# x86 CPUs with AVX-512 VNNI/BF16 or AMX, and as the scripts run everywhere on x86), the core
# library tests (the files marked `pytestmark = pytest.mark.core`) again with oneDNN off (the
# Eigen kernels TensorFlow picks on AVX2-only CPUs: a NaN or a rounding can differ between the
# two), then the core tests under JAX, each on TEST_WORKERS pytest-xdist workers (two on two
# cores: three cost more CPU than they saved wall time, docs/layout.md). The second and third
# passes leave out the core tests marked `large` (-m "core and not large"): each starts a fresh
# Python process (a saved file loaded with Keras alone, data read without TensorFlow) or repeats
# a fast test with more work (a traced fit with every monitoring callback, the mixed_bfloat16
# twins); they took 53 s (oneDNN off) and 66 s (JAX) of worker time there (docs/layout.md).
# The first pass runs them.
# `--dist loadscope` keeps each module's tests on one worker, so a module-scoped fixture (a
# training run shared by a file's tests) runs once, not once per worker.
# `--no-loadscope-reorder` hands the files out in collection order, which tests/conftest.py
# makes large files first, then the rest most tests first (xdist's default order alone left the
# one-test multi-minute files to the end, with one worker idle). The JAX pass compiles with
# JAX_DISABLE_MOST_OPTIMIZATIONS=1 (XLA's cheap compile): its tests compile far more than they
# run; tests/test_backend_jax.py still compares JAX, compiled as users compile it, with
# TensorFlow.
TEST_WORKERS ?= 2
PYTEST = $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder
# The files holding core tests: the second and third passes collect only these (each worker
# importing the others' modules cost ~2 s of CPU under JAX); `-m` still picks the tests.
CORE_TEST_FILES = $(shell grep -rl --include='test_*.py' 'pytest.mark.core' tests | sort)
# What the oneDNN-off and JAX passes run: one expression for both.
FAST_CORE_TESTS = -m "core and not large" $(CORE_TEST_FILES)

test: venv data
	KERAS_BACKEND=tensorflow TF_ENABLE_ONEDNN_OPTS=1 TF_CPP_MIN_LOG_LEVEL=3 $(PYTEST) --durations=12 tests
	KERAS_BACKEND=tensorflow TF_ENABLE_ONEDNN_OPTS=0 TF_CPP_MIN_LOG_LEVEL=3 $(PYTEST) $(FAST_CORE_TESTS)
	KERAS_BACKEND=jax JAX_DISABLE_MOST_OPTIMIZATIONS=1 TF_CPP_MIN_LOG_LEVEL=3 $(PYTEST) $(FAST_CORE_TESTS)

# The fast loop while changing code: every test not marked `large` (those start the scripts or
# TensorFlow in subprocesses, or build the big networks: see tests/conftest.py), under
# TensorFlow, oneDNN on. `make test` still runs everything before a commit.
test-fast: venv data
	KERAS_BACKEND=tensorflow TF_ENABLE_ONEDNN_OPTS=1 TF_CPP_MIN_LOG_LEVEL=3 $(PYTEST) --durations=8 -m "not large" tests

demo: venv data
	TF_CPP_MIN_LOG_LEVEL=3 $(PY) -m experiments.compare --preset=demo --jobs=2 --work_dir=$(WORK_DIR)/demo

benchmark: venv
	TF_CPP_MIN_LOG_LEVEL=3 $(PY) -m benchmarks.throughput --peer

clean-venv:
	rm -rf $(VENV)
