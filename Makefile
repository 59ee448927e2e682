PY := .venv/bin/python
PYTEST := $(PY) -m pytest

.PHONY: setup run test test-unit test-integration test-e2e test-faults bench docs clean

setup:
	./scripts/setup.sh

## Start the whole platform on this host (all four services, local backends) until Ctrl-C.
run: setup
	$(PY) -m shared.devrun

## The whole test suite against real Postgres, RabbitMQ and Chromium.
test: setup
	$(PYTEST) -m "not faults" tests clients/python/tests

test-unit: setup
	$(PYTEST) tests/unit clients/python/tests

test-integration: setup
	$(PYTEST) tests/integration

test-e2e: setup
	$(PYTEST) tests/e2e -m "not faults"

## Long fault-injection scenarios (kills, broker and database restarts).
test-faults: setup
	$(PYTEST) -m faults tests

bench: setup
	$(PY) -m bench

## Regenerate docs/openapi/*.json and docs/asyncapi.yaml (tests/unit/test_docs_fresh.py checks them).
docs: setup
	$(PY) scripts/gen_docs.py

clean:
	rm -rf .venv test-artifacts .pytest_cache
