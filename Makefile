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
DIST := dist
# Interpreters test-wheel installs the abi3 wheel under, one fresh venv each.
WHEEL_PYTHONS ?= $(PYTHON)

# The library's version and ABI name (dispatcher-ffi/build.rs gives the .so the same soname:
# .so.MAJOR from 1.0 on, .so.0.MINOR while 0.x).
VERSION := $(shell sed -n 's/^version = "\([0-9][^"]*\)"/\1/p' Cargo.toml | head -n 1)
VERSION_MAJOR := $(word 1,$(subst ., ,$(VERSION)))
VERSION_MINOR := $(word 2,$(subst ., ,$(VERSION)))
SOVERSION := $(if $(filter 0,$(VERSION_MAJOR)),0.$(VERSION_MINOR),$(VERSION_MAJOR))
SONAME := libbackground_dispatcher.so.$(SOVERSION)
REALNAME := libbackground_dispatcher.so.$(VERSION)
# What libbackground_dispatcher.a needs from the system (Libs.private in the .pc file, the
# static CMake target's link interface). From `cargo rustc --release -p dispatcher-ffi
# --crate-type staticlib -- --print native-static-libs`, less the implicit -lc;
# `make test-install` links a program statically against it, so a missing one fails there.
STATIC_LIBS := -lgcc_s -lutil -lrt -lpthread -lm -ldl

# `make install`: GNU conventions (prefix/PREFIX, libdir/LIBDIR, includedir/INCLUDEDIR, DESTDIR).
prefix ?= /usr/local
PREFIX ?= $(prefix)
LIBDIR ?= $(PREFIX)/lib
INCLUDEDIR ?= $(PREFIX)/include
PKGCONFIGDIR ?= $(LIBDIR)/pkgconfig
CMAKEDIR ?= $(LIBDIR)/cmake/BackgroundDispatcher
INSTALL ?= install
PKG_CONFIG := $(BIN)/pkg-config

# Preemptions per interleaving that the loom models explore (make test-loom): 2 catches every
# seeded bug in tests/loom_mutants.py in seconds; 3 takes minutes.
LOOM_MAX_PREEMPTIONS ?= 2

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
	@# Programs linked against target/release record the soname: give it to them there.
	@ln -sf libbackground_dispatcher.so $(LIB_DIR)/$(SONAME)

# The .pc file keeps ${prefix} in its paths where it can, so `pkg-config --define-prefix`
# can relocate it; the CMake package finds everything relative to its own directory.
PC_LIBDIR = $(patsubst $(PREFIX)/%,$${prefix}/%,$(LIBDIR))
PC_INCLUDEDIR = $(patsubst $(PREFIX)/%,$${prefix}/%,$(INCLUDEDIR))
RELPATH = $(shell $(PYTHON) -c 'import os,sys; print(os.path.relpath(sys.argv[1], sys.argv[2]))' $(1) $(2))
CMAKE_TO_INCLUDEDIR = $(call RELPATH,$(INCLUDEDIR),$(CMAKEDIR))
CMAKE_TO_LIBDIR = $(call RELPATH,$(LIBDIR),$(CMAKEDIR))
SPACE := $(subst ,, )
CMAKE_STATIC_LIBS = $(subst $(SPACE),;,$(patsubst -l%,%,$(STATIC_LIBS)))
SIZEOF_VOID_P = $(shell echo __SIZEOF_POINTER__ | $(CC) -E -P - | tail -n 1)
INSTALLED_FILES = $(LIBDIR)/$(REALNAME) $(LIBDIR)/$(SONAME) $(LIBDIR)/libbackground_dispatcher.so \
	$(LIBDIR)/libbackground_dispatcher.a $(INCLUDEDIR)/background_dispatcher.h \
	$(INCLUDEDIR)/background_dispatcher.hpp $(PKGCONFIGDIR)/background-dispatcher.pc \
	$(CMAKEDIR)/BackgroundDispatcherConfig.cmake $(CMAKEDIR)/BackgroundDispatcherConfigVersion.cmake

.PHONY: install
install: $(if $(NO_BUILD),,build) ## Install library, headers, pkg-config and CMake files (PREFIX=/usr/local, DESTDIR; NO_BUILD=1 for sudo)
	@test -f $(LIB_DIR)/libbackground_dispatcher.so || { echo "run 'make build' first"; exit 1; }
	$(INSTALL) -d $(DESTDIR)$(LIBDIR) $(DESTDIR)$(INCLUDEDIR) $(DESTDIR)$(PKGCONFIGDIR) $(DESTDIR)$(CMAKEDIR)
	$(INSTALL) -m 0755 $(LIB_DIR)/libbackground_dispatcher.so $(DESTDIR)$(LIBDIR)/$(REALNAME)
	ln -sf $(REALNAME) $(DESTDIR)$(LIBDIR)/$(SONAME)
	ln -sf $(SONAME) $(DESTDIR)$(LIBDIR)/libbackground_dispatcher.so
	$(INSTALL) -m 0644 $(LIB_DIR)/libbackground_dispatcher.a $(DESTDIR)$(LIBDIR)/libbackground_dispatcher.a
	$(INSTALL) -m 0644 include/background_dispatcher.h include/background_dispatcher.hpp $(DESTDIR)$(INCLUDEDIR)/
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@LIBDIR@|$(PC_LIBDIR)|' -e 's|@INCLUDEDIR@|$(PC_INCLUDEDIR)|' \
		-e 's|@VERSION@|$(VERSION)|' -e 's|@STATIC_LIBS@|$(STATIC_LIBS)|' \
		packaging/background-dispatcher.pc.in > $(DESTDIR)$(PKGCONFIGDIR)/background-dispatcher.pc
	sed -e 's|@CMAKE_TO_INCLUDEDIR@|$(CMAKE_TO_INCLUDEDIR)|' -e 's|@CMAKE_TO_LIBDIR@|$(CMAKE_TO_LIBDIR)|' \
		-e 's|@REALNAME@|$(REALNAME)|' \
		-e 's|@SONAME@|$(SONAME)|' -e 's|@CMAKE_STATIC_LIBS@|$(CMAKE_STATIC_LIBS)|' \
		packaging/BackgroundDispatcherConfig.cmake.in > $(DESTDIR)$(CMAKEDIR)/BackgroundDispatcherConfig.cmake
	sed -e 's|@VERSION@|$(VERSION)|' -e 's|@VERSION_MAJOR@|$(VERSION_MAJOR)|' \
		-e 's|@VERSION_MINOR@|$(VERSION_MINOR)|' -e 's|@SIZEOF_VOID_P@|$(SIZEOF_VOID_P)|' \
		packaging/BackgroundDispatcherConfigVersion.cmake.in > $(DESTDIR)$(CMAKEDIR)/BackgroundDispatcherConfigVersion.cmake

.PHONY: uninstall
uninstall: ## Remove what `make install` installed (same PREFIX, DESTDIR)
	rm -f $(addprefix $(DESTDIR),$(INSTALLED_FILES))
	rmdir $(DESTDIR)$(CMAKEDIR) 2>/dev/null || true

.PHONY: header
header: $(CBINDGEN) ## Regenerate include/background_dispatcher.h
	$(CBINDGEN) --quiet --config dispatcher-ffi/cbindgen.toml --crate dispatcher-ffi --output $(HEADER) dispatcher-ffi

.PHONY: check-header
check-header: $(CBINDGEN) ## Fail if the committed header is stale
	@$(CBINDGEN) --quiet --verify --config dispatcher-ffi/cbindgen.toml --crate dispatcher-ffi --output $(HEADER) dispatcher-ffi \
		|| { echo "include/background_dispatcher.h is stale: run 'make header' and commit it"; exit 1; }

.PHONY: demo
demo: python ## The gateway demo: threads log requests, batches are POSTed to a log collector
	$(PY) examples/python/gateway_demo.py $(DEMO_ARGS)

# The C demo, linked like every C consumer of the library (rebuilt whenever `build` runs).
# gateway_demo.py --serve runs it as `build/gateway_demo ARGS --collector URL` and serves URL.
DEMO_C := build/gateway_demo
DEMO_C_RUN := $(PY) examples/python/gateway_demo.py --serve --timeout 120 -- ./$(DEMO_C)

$(DEMO_C): build examples/c/gateway_demo.c $(HEADER)
	@mkdir -p build
	$(CC) -std=c11 -O2 -Wall -Wextra -Iinclude examples/c/gateway_demo.c -o $(DEMO_C) \
		-L$(LIB_DIR) -lbackground_dispatcher -Wl,-rpath,$(LIB_DIR) -lpthread

.PHONY: demo-c
demo-c: $(DEMO_C) python ## The C gateway demo, POSTing its batches to the Python demo's collector
	$(DEMO_C_RUN) $(DEMO_ARGS)

.PHONY: test-demo-c
test-demo-c: $(DEMO_C) python ## The C demo over HTTP for a second: the collector must count every entry
	$(DEMO_C_RUN) --duration 1

.PHONY: python
python: $(VENV)/.installed ## Build and install the Python package into .venv
	PATH="$(BIN):$$PATH" $(PY) -m pip install --quiet --disable-pip-version-check --no-build-isolation --force-reinstall --no-deps ./bindings/python

.PHONY: test
test: lint check-header test-rust test-reliability-rust test-loom test-c test-install test-wheel test-demo-c test-python ## Run every test (what CI runs)

.PHONY: test-rust
test-rust: ## Rust unit and integration tests
	cargo test --quiet

# Debug build, like test-rust (debug assertions on); --nocapture shows each check's figures.
# BD_TEST_SEED=<n> replays a run's random choices (each check prints its seed).
.PHONY: test-reliability-rust
test-reliability-rust: ## Reliability suite, Rust side: load, random shutdowns, faults, bounded memory (~15 s)
	cargo test --quiet --package dispatcher-core --test 'reliability_*' -- --nocapture

.PHONY: test-loom
test-loom: ## Model-check the engine's hand-off with loom, then check that seeded bugs fail it
	RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom LOOM_MAX_PREEMPTIONS=$(LOOM_MAX_PREEMPTIONS) \
		cargo test --locked --package dispatcher-core --profile loom --test loom_handoff -- --show-output
	LOOM_MAX_PREEMPTIONS=$(LOOM_MAX_PREEMPTIONS) $(PYTHON) dispatcher-core/tests/loom_mutants.py

.PHONY: test-c
test-c: build $(VENV)/.installed ## C/C++ tests under ctest: plain, AddressSanitizer+UBSan, valgrind
	$(CMAKE) -S tests/c -B $(C_BUILD) -DBD_ROOT=$(CURDIR) -DCMAKE_BUILD_TYPE=Debug > /dev/null
	$(CMAKE) --build $(C_BUILD) -j $(JOBS) > /dev/null
	$(CTEST) --test-dir $(C_BUILD) --output-on-failure -j $(JOBS)

.PHONY: test-install
test-install: build $(VENV)/.installed ## make install into temporary prefixes; build and run pkg-config and CMake consumers
	PATH="$(BIN):$$PATH" MAKE="$(MAKE)" CMAKE="$(CMAKE)" PKG_CONFIG="$(PKG_CONFIG)" CC="$(CC)" \
		SONAME="$(SONAME)" REALNAME="$(REALNAME)" VERSION="$(VERSION)" sh tests/install/run.sh

.PHONY: test-c-reliability
test-c-reliability: build $(VENV)/.installed ## Only the C reliability tests (ctest -L reliability), figures shown
	$(CMAKE) -S tests/c -B $(C_BUILD) -DBD_ROOT=$(CURDIR) -DCMAKE_BUILD_TYPE=Debug > /dev/null
	$(CMAKE) --build $(C_BUILD) -j $(JOBS) > /dev/null
	$(CTEST) --test-dir $(C_BUILD) --output-on-failure -j $(JOBS) -L reliability -V

.PHONY: test-python
test-python: python ## pytest tests/python, the stub check (mypy.stubtest) and mypy --strict
	cd tests/python && $(PY) -m pytest -q
	$(PY) -m mypy.stubtest background_dispatcher --allowlist bindings/python/stubtest-allowlist.txt
	$(PY) -m mypy --strict bindings/python/python/background_dispatcher

.PHONY: bench
bench: $(VENV)/.installed ## Benchmarks against the peers (2-3 min; QUICK=1: ~30 s) into benchmarks/RESULTS.md
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
lint: $(VENV)/.installed ## ruff check and format, mypy --strict (package, tests, examples), rustfmt, clippy -D warnings
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	@# The package's source and stub, not an installed copy: lint needs no build.
	MYPYPATH=bindings/python/python $(PY) -m mypy --strict bindings/python/python/background_dispatcher tests/python tests/wheel examples/python
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

.PHONY: doc
doc: ## Rust API docs (cargo doc, warnings are errors) into target/doc
	RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --package dispatcher-core --package dispatcher-ffi
	@echo "open target/doc/dispatcher_core/index.html"

.PHONY: clean
clean: ## Remove build output (keeps .venv)
	cargo clean
	rm -rf build
