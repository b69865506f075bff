# background-dispatcher: the developer entry point. `make help` lists the targets.
#
# Needs only a Rust toolchain, Python 3 and a C compiler: everything else (cmake, cbindgen,
# and the Python tools) is installed, pinned, into .venv on first use.

PYTHON ?= python3
CC ?= cc
VENV := .venv
BIN := $(abspath $(VENV))/bin
CBINDGEN_VERSION := 0.29.4
CARGO_FUZZ_VERSION := 0.13.2
CARGO_FUZZ := $(BIN)/cargo-fuzz
CMAKE := $(BIN)/cmake
CTEST := $(BIN)/ctest
CBINDGEN := $(BIN)/cbindgen
PY := $(BIN)/python
LIB_DIR := $(abspath target/release)
HEADER := include/background_dispatcher.h
C_BUILD := build/c
JOBS ?= 2

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
test: check-header test-rust test-c test-python ## Run every test (what CI runs)

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

.PHONY: soak
soak: ## Slow tier, not in CI: fuzz, TSan and a soak (SOAK_FUZZ_SECONDS=60, SOAK_MINUTES=30), then a summary
	@$(MAKE) --no-print-directory soak-tools
	BD_TOOLS_BIN=$(BIN) bash tests/soak/run.sh all

.PHONY: soak-fuzz soak-tsan soak-run
soak-fuzz: soak-tools ## make soak's fuzz part alone
	BD_TOOLS_BIN=$(BIN) bash tests/soak/run.sh fuzz
soak-tsan: ## make soak's ThreadSanitizer part alone
	bash tests/soak/run.sh tsan
soak-run: ## make soak's soak part alone
	bash tests/soak/run.sh soak

# cargo-fuzz only where it can run: without nightly, run.sh prints SKIPPED for the fuzz part.
.PHONY: soak-tools
soak-tools:
	@if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then $(MAKE) --no-print-directory $(CARGO_FUZZ); fi

$(CARGO_FUZZ):
	cargo install --quiet --locked cargo-fuzz --version $(CARGO_FUZZ_VERSION) --root $(VENV)

.PHONY: lint
lint: ## rustfmt and clippy
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings
	$(PY) -m mypy --strict bindings/python/python/background_dispatcher tests/python

.PHONY: clean
clean: ## Remove build output (keeps .venv)
	cargo clean
	rm -rf build
