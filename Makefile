# Every check CI runs; `make test` is the README's test command. It installs what it needs into
# the active environment first (the package with its `dev` extra), so it works in a fresh venv
# right after the README's first command.
PYTHON ?= python3

.PHONY: test lint rust-test install py-test typecheck examples toolchain wheel wheel-test docs

test: install lint rust-test typecheck docs py-test examples wheel-test

# rustfmt and clippy, where the toolchain is managed by rustup (a no-op when present).
toolchain:
	@if command -v rustup >/dev/null 2>&1; then rustup component add rustfmt clippy >/dev/null 2>&1 || true; fi

lint: toolchain
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings
	$(PYTHON) -m ruff check python tests examples bench
	$(PYTHON) -m ruff format --check python tests examples bench
	# The release workflow: GitHub's workflow schema (vendored, offline) and zizmor's audits
	# (actionlint installs only by downloading from GitHub at build time).
	check-jsonschema --builtin-schema vendor.github-workflows .github/workflows/*.yml
	zizmor --offline --no-progress .github/workflows

rust-test:
	cargo test -p ferrobatch-core

# pip builds the wheel in the tree's own target/ directory, so after `pip install .` this
# reinstall finds cargo's release build fresh: seconds, not minutes.
install:
	$(PYTHON) -m pip install --quiet ".[dev]"

typecheck:
	$(PYTHON) -m mypy python/ferrobatch tests/typing
	$(PYTHON) -m mypy.stubtest ferrobatch

py-test:
	$(PYTHON) -m pytest -q

# The examples run top to bottom against the shipped fake server.
examples:
	@for f in examples/*.py; do echo "$$f"; $(PYTHON) "$$f" >/dev/null || exit 1; done

# The release artifacts as a PyPI release would have them, in dist/: an abi3 wheel (cp39-abi3)
# for manylinux2014 x86_64, linked with maturin's zig (ziglang from PyPI; no Docker), and an
# sdist. It installs what it needs into the active environment first.
DIST ?= dist
wheel:
	$(PYTHON) -m pip install --quiet "maturin>=1.7,<2" ziglang auditwheel
	rm -rf $(DIST)
	$(PYTHON) -m maturin build --release --zig --compatibility manylinux2014 \
		--target x86_64-unknown-linux-gnu --out $(DIST)
	$(PYTHON) -m maturin sdist --out $(DIST)

# The wheel stands alone: a fresh venv, with no Rust toolchain on PATH, installs it and runs
# the Python tests against the installed package (tests/test_wheel.py also checks its tag
# with auditwheel); the source tree's python/ is never imported.
WHEEL_VENV ?= target/wheel-venv
NO_RUST_PATH = $(shell printf '%s' "$$PATH" | tr ':' '\n' | grep -v -e '\.cargo' -e rustup | paste -sd: -)
wheel-test: wheel
	rm -rf $(WHEEL_VENV)
	$(PYTHON) -m venv $(WHEEL_VENV)
	PATH="$(abspath $(WHEEL_VENV))/bin:$(NO_RUST_PATH)" sh -c '\
		set -e; ! command -v cargo >/dev/null; ! command -v rustc >/dev/null; \
		wheel=$$(ls $(abspath $(DIST))/*.whl); \
		python -m pip install --quiet "ferrobatch[test,bench,ray] @ file://$$wheel" auditwheel; \
		cd tests && python -c "import ferrobatch, sys; assert \"site-packages\" in ferrobatch.__file__, ferrobatch.__file__"; cd ..; \
		FERROBATCH_WHEEL=$$wheel python -m pytest -q -p no:cacheprovider'

# The documentation site (MkDocs with Material; the API reference from the stubs and
# docstrings by mkdocstrings), built strictly into site/.
docs:
	NO_MKDOCS_2_WARNING=1 $(PYTHON) -m mkdocs build --strict --quiet
