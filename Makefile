# Every check CI runs; `make test` is the README's test command. It installs what it needs into
# the active environment first (the package with its `dev` extra), so it works in a fresh venv
# right after the README's first command.
PYTHON ?= python3

.PHONY: test lint rust-test install py-test typecheck examples toolchain

test: install lint rust-test typecheck py-test examples

# rustfmt and clippy, where the toolchain is managed by rustup (a no-op when present).
toolchain:
	@if command -v rustup >/dev/null 2>&1; then rustup component add rustfmt clippy >/dev/null 2>&1 || true; fi

lint: toolchain
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings
	$(PYTHON) -m ruff check python tests examples bench
	$(PYTHON) -m ruff format --check python tests examples bench

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
