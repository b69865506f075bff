# background-dispatcher: the developer entry point. `make help` lists the targets.
#
# Needs only a Rust toolchain, Python 3 and a C compiler: everything else (cmake, cbindgen,
# and the Python tools) is installed, pinned, into .venv on first use.

PYTHON ?= python3
CC ?= cc
VENV := .venv
BIN := $(abspath $(VENV))/bin
CBINDGEN_VERSION := 0.29.4
CMAKE := $(BIN)/cmake
CTEST := $(BIN)/ctest
CBINDGEN := $(BIN)/cbindgen
PY := $(BIN)/python
LIB_DIR := $(abspath target/release)
HEADER := include/background_dispatcher.h
C_BUILD := build/c
JOBS ?= 2
DIST := dist
# Interpreters test-wheel installs the abi3 wheel under, one fresh venv each.
WHEEL_PYTHONS ?= $(PYTHON)

.DEFAULT_GOAL := help

.PHONY: help
help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  %-14s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(VENV)/.installed: requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

$(CBINDGEN):
	cargo install --quiet --locked cbindgen --version $(CBINDGEN_VERSION) --root $(VENV)

.PHONY: tools
tools: $(VENV)/.installed $(CBINDGEN) ## Install the pinned tools into .venv

.PHONY: build
build: ## Build the C library (target/release/libbackground_dispatcher.{so,a})
	cargo build --release --package dispatcher-ffi

.PHONY: header
header: $(CBINDGEN) ## Regenerate include/background_dispatcher.h
	$(CBINDGEN) --quiet --config dispatcher-ffi/cbindgen.toml --crate dispatcher-ffi --output $(HEADER) dispatcher-ffi

.PHONY: check-header
check-header: $(CBINDGEN) ## Fail if the committed header is stale
	@$(CBINDGEN) --quiet --verify --config dispatcher-ffi/cbindgen.toml --crate dispatcher-ffi --output $(HEADER) dispatcher-ffi \
		|| { echo "include/background_dispatcher.h is stale: run 'make header' and commit it"; exit 1; }

.PHONY: demo
demo: build ## Run the C demo: threads logging requests into one dispatcher
	@mkdir -p build
	$(CC) -std=c11 -O2 -Wall -Wextra -Iinclude examples/c/request_log.c -o build/request_log \
		-L$(LIB_DIR) -lbackground_dispatcher -Wl,-rpath,$(LIB_DIR) -lpthread
	./build/request_log

.PHONY: python
python: $(VENV)/.installed ## Build and install the Python package into .venv
	PATH="$(BIN):$$PATH" $(PY) -m pip install --quiet --disable-pip-version-check --no-build-isolation --force-reinstall --no-deps ./bindings/python

.PHONY: test
test: lint check-header test-rust test-c test-wheel test-python ## Run every test (what CI runs)

.PHONY: test-rust
test-rust: ## Rust unit and integration tests
	cargo test --quiet

.PHONY: test-c
test-c: build $(VENV)/.installed ## C/C++ tests under ctest: plain, AddressSanitizer, valgrind
	$(CMAKE) -S tests/c -B $(C_BUILD) -DBD_ROOT=$(CURDIR) -DCMAKE_BUILD_TYPE=Debug > /dev/null
	$(CMAKE) --build $(C_BUILD) -j $(JOBS) > /dev/null
	$(CTEST) --test-dir $(C_BUILD) --output-on-failure -j $(JOBS)

.PHONY: test-python
test-python: python ## pytest tests/python, the stub check (mypy.stubtest) and mypy --strict
	cd tests/python && $(PY) -m pytest -q
	$(PY) -m mypy.stubtest background_dispatcher --allowlist bindings/python/stubtest-allowlist.txt
	$(PY) -m mypy --strict bindings/python/python/background_dispatcher

.PHONY: bench
bench: $(VENV)/.installed ## Benchmarks against the peers (~8 min; QUICK=1: ~1 min) into benchmarks/RESULTS.md
	PATH="$(BIN):$$PATH" $(PY) benchmarks/run.py $(if $(QUICK),--quick)

.PHONY: lint
lint: $(VENV)/.installed ## ruff check and format, mypy --strict (package and tests), rustfmt, clippy -D warnings
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	@# The package's source and stub, not an installed copy: lint needs no build.
	MYPYPATH=bindings/python/python $(PY) -m mypy --strict bindings/python/python/background_dispatcher tests/python tests/wheel
	cargo fmt --all --check
	@# pyo3's build script needs an interpreter: the pinned venv's, as `make python` builds with.
	PYO3_PYTHON=$(PY) cargo clippy --quiet --workspace --all-targets -- -D warnings

.PHONY: wheel
wheel: $(VENV)/.installed ## Build the abi3 wheel of the Python package into dist/
	rm -f $(DIST)/background_dispatcher-*.whl
	PATH="$(BIN):$$PATH" $(BIN)/maturin build --release --manifest-path bindings/python/Cargo.toml --interpreter $(PY) --out $(DIST)

.PHONY: test-wheel
test-wheel: wheel ## Install the wheel into a fresh virtual environment (no index) and smoke-test it there
	$(PYTHON) tests/wheel/run.py $(DIST) $(WHEEL_PYTHONS)

.PHONY: clean
clean: ## Remove build output (keeps .venv)
	cargo clean
	rm -rf build
