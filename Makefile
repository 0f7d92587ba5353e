# pswd-gateway — the two commands a newcomer needs: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP_RUN := $(VENV)/.installed-run
STAMP_DEV := $(VENV)/.installed-dev
# The dependencies pinned with their hashes (`make lock` writes them from pyproject.toml):
# run.lock for the gateway, dev.lock for the gateway and the `dev` extra, same versions in both.
LOCK_RUN := requirements/run.lock
LOCK_DEV := requirements/dev.lock
# Each lock lists every file of each pinned release by hash and names no index (pip's own
# configuration says where packages come from); run.lock is resolved within dev.lock's pins.
PIP_COMPILE := CUSTOM_COMPILE_COMMAND="make lock" $(BIN)/pip-compile --quiet --generate-hashes \
	--allow-unsafe --strip-extras --no-emit-index-url --no-emit-find-links $(LOCK_ARGS)
# The tools of `make lock` and `make audit` go into .venv beside the locked packages and may not
# move them: the dev lock's pins, without their hashes, as pip constraints.
PINS_OF := sed -n 's/^\([A-Za-z0-9._-]*==[^ ]*\).*/\1/p'
TOOL_PINS = $(if $(wildcard $(LOCK_DEV)),--constraint <($(PINS_OF) $(LOCK_DEV)))

.PHONY: demo test test-tools lint typecheck pytest bench clean deb lock audit

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"

# The locked dependencies, every file checked against its hash, then the gateway itself editable.
$(STAMP_RUN): pyproject.toml $(LOCK_RUN) | $(BIN)/python
	$(BIN)/python -m pip install --quiet --require-hashes -r $(LOCK_RUN)
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $@

$(STAMP_DEV): pyproject.toml $(LOCK_DEV) | $(BIN)/python
	$(BIN)/python -m pip install --quiet --require-hashes -r $(LOCK_DEV)
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $@ $(STAMP_RUN)

## demo: start the simulated site and the gateway on loopback, announce a job, show it live
demo: $(STAMP_RUN)
	$(BIN)/pswd-gateway demo --config config/demo.toml

## test: ruff, mypy --strict, import-linter contracts, pytest
test: $(STAMP_DEV) lint typecheck pytest

lint: $(STAMP_DEV)
	$(BIN)/ruff check pswd_gateway tests requirements
	$(BIN)/ruff format --check pswd_gateway tests requirements
	$(BIN)/lint-imports

typecheck: $(STAMP_DEV)
	$(BIN)/mypy
	$(BIN)/mypy requirements/audit.py

## test-tools: promtool/prometheus (into .venv/tools), systemd-analyze, lintian where missing
test-tools: | $(BIN)/python
	scripts/test-tools $(VENV)/tools

pytest: $(STAMP_DEV) test-tools
	PATH="$(abspath $(VENV))/tools/usr/bin:$$PATH" $(BIN)/pytest -q --durations=15 tests/unit tests/integration

## bench: the benchmarks behind docs/benchmarks.md
bench: $(STAMP_DEV)
	$(BIN)/pswd-gateway bench poll --devices 10 --devices 100 --devices 500

## lock: pin pyproject.toml's dependencies with hashes in requirements/*.lock (pip-tools); keeps
## the pins that still fit, `make lock LOCK_ARGS=--upgrade` (or --upgrade-package NAME) moves them
lock: | $(BIN)/python
	$(BIN)/python -m pip install --quiet $(TOOL_PINS) "pip-tools>=7.4,<8"
	$(PIP_COMPILE) --extra dev --output-file $(LOCK_DEV) pyproject.toml
	$(PIP_COMPILE) --constraint $(LOCK_DEV) --output-file $(LOCK_RUN) pyproject.toml

## audit: the dev lock against PyPI's advisory data (pip-audit); fails on an advisory that
## requirements/advisories.toml does not list as known and contained, and on a package it could
## not audit (AUDIT_ARGS='-s osv' asks OSV instead)
audit: | $(BIN)/python
	$(BIN)/python -m pip install --quiet $(TOOL_PINS) "pip-audit>=2.7,<3"
	$(BIN)/python requirements/audit.py $(LOCK_DEV) requirements/advisories.toml $(AUDIT_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache var build dist *.egg-info

## deb: the edge box's Debian package, dist/pswd-gateway_<version>_<arch>.deb (docs/deployment.md)
deb: | $(BIN)/python
	PIP_PYTHON=$(BIN)/python packaging/build-deb

## fuzz: the hostile-device suites (tests marked fuzz) with FUZZ_EXAMPLES examples per property
FUZZ_EXAMPLES ?= 1000
.PHONY: fuzz
fuzz: $(STAMP_DEV)
	PSWD_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/pytest -q -m fuzz --timeout=0 tests/unit tests/integration
