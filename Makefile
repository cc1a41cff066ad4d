# The two commands of the README's Quick start are `make run` and `make test`.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c  # a coverage floor missed fails the target despite the pipes
VENV ?= .venv
BIN := $(VENV)/bin
COVERAGE ?= 85
CLI_COVERAGE ?= 80

.PHONY: setup engine browser run stop serve bench-dashboard test unit unit-coverage integration lint schema bench bench-serve bench-rollback bench-metrics bench-proxy clean

setup:
	@bash scripts/setup.sh

engine:
	@bash scripts/engine.sh

# Debian's chromium, for the dashboard's browser tests (tests/integration/test_dashboard.py).
browser:
	@bash scripts/browser.sh

# The main job: environment, engine, the hello example applied and kept converged by a
# `diplo serve` in the background; prints its status and the dashboard's address.
run: setup engine
	@bash scripts/run.sh

# Stops the `diplo serve` that `make run` started (the apps keep running).
stop:
	@home=$$($(BIN)/python -c 'from diplo.paths import default_home; print(default_home())'); \
	if [ -f "$$home/run-serve.pid" ] && kill "$$(cat "$$home/run-serve.pid")" 2>/dev/null; then \
	  echo "stopped diplo serve"; else echo "no diplo serve of make run is running"; fi; \
	rm -f "$$home/run-serve.pid"

# The example kept converged by `diplo serve`, in the foreground: its dashboard is at the
# printed address (http://127.0.0.1:7700). Ctrl-C stops it; the apps keep running.
serve: setup engine
	$(BIN)/diplo serve --manifests examples/hello

lint: setup
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/mypy

# The whole suite: lint, layering and types; the unit tests (no Docker) with their coverage,
# which must stay at or above the floors below; the real-Docker integration tests.
test: setup engine browser lint unit-coverage
	$(BIN)/pytest -q -ra tests/integration

unit-coverage: setup
	$(BIN)/coverage run -m pytest -q -ra tests/unit
	$(BIN)/coverage report --include='diplo/cli/*' --fail-under=$(CLI_COVERAGE) | tail -n 1 | sed 's/^TOTAL/unit coverage of diplo\/cli:/'
	$(BIN)/coverage report --fail-under=$(COVERAGE) | tail -n 1 | sed 's/^TOTAL/unit coverage of diplo:/'

unit: setup
	$(BIN)/pytest -q tests/unit

integration: setup engine browser
	$(BIN)/pytest -q tests/integration

schema: setup
	$(BIN)/diplo schema > schemas/diplo.schema.json

bench: setup engine
	$(BIN)/python benchmarks/converge.py

bench-rollback: setup engine
	$(BIN)/python benchmarks/rollback.py

bench-dashboard: setup engine browser
	$(BIN)/python benchmarks/dashboard.py

bench-metrics: setup engine
	$(BIN)/python benchmarks/metrics.py

bench-proxy: setup engine
	command -v wrk >/dev/null || (DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null)
	$(BIN)/python benchmarks/proxy.py

# wrk drives the load; Debian packages it.
bench-serve: setup engine
	@command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; } || { echo "install wrk first" >&2; exit 1; }
	$(BIN)/python benchmarks/serve.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
