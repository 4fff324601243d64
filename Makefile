# Every check CI runs; `make test` is the README's test command.
PYTHON ?= python3

.PHONY: test lint rust-test install py-test typecheck

test: install lint rust-test typecheck py-test

lint:
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings
	$(PYTHON) -m ruff check python tests examples bench
	$(PYTHON) -m ruff format --check python tests examples bench

rust-test:
	cargo test -p ferrobatch-core

install:
	$(PYTHON) -m pip install --quiet ".[dev]"

typecheck:
	$(PYTHON) -m mypy python/ferrobatch tests/typing
	$(PYTHON) -m mypy.stubtest ferrobatch

py-test:
	$(PYTHON) -m pytest -q
