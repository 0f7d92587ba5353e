# pswd-gateway — the two commands a newcomer needs: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP_RUN := $(VENV)/.installed-run
STAMP_DEV := $(VENV)/.installed-dev

.PHONY: demo test test-tools lint typecheck pytest bench clean deb

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"

$(STAMP_RUN): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(STAMP_DEV): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@ $(STAMP_RUN)

## demo: start the simulated site and the gateway on loopback, announce a job, show it live
demo: $(STAMP_RUN)
	$(BIN)/pswd-gateway demo --config config/demo.toml

## test: ruff, mypy --strict, import-linter contracts, pytest
test: $(STAMP_DEV) lint typecheck pytest

lint: $(STAMP_DEV)
	$(BIN)/ruff check pswd_gateway tests
	$(BIN)/ruff format --check pswd_gateway tests
	$(BIN)/lint-imports

typecheck: $(STAMP_DEV)
	$(BIN)/mypy

## test-tools: promtool/prometheus (into .venv/tools), systemd-analyze, lintian where missing
test-tools: | $(BIN)/python
	scripts/test-tools $(VENV)/tools

pytest: $(STAMP_DEV) test-tools
	PATH="$(abspath $(VENV))/tools/usr/bin:$$PATH" $(BIN)/pytest -q tests/unit tests/integration

## bench: the benchmarks behind docs/benchmarks.md
bench: $(STAMP_DEV)
	$(BIN)/pswd-gateway bench poll --devices 10 --devices 100 --devices 500

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache var build dist *.egg-info

## deb: the edge box's Debian package, dist/pswd-gateway_<version>_<arch>.deb (docs/deployment.md)
deb: | $(BIN)/python
	PIP_PYTHON=$(BIN)/python packaging/build-deb
