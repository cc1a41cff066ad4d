# The two commands of the README's Quick start are `make run` and `make test`.
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup engine run test unit integration lint schema bench bench-serve bench-rollback clean

setup:
	@bash scripts/setup.sh

engine:
	@bash scripts/engine.sh

# The main job: environment, engine, the hello example applied, and its status.
run: setup engine
	$(BIN)/diplo apply -f examples/hello/diplo.yaml
	$(BIN)/diplo status

lint: setup
	$(BIN)/ruff check .
	$(BIN)/lint-imports

# The whole suite: lint, layering, unit and real-Docker integration tests.
test: setup engine lint
	$(BIN)/pytest -q -ra

unit: setup
	$(BIN)/pytest -q tests/unit

integration: setup engine
	$(BIN)/pytest -q tests/integration

schema: setup
	$(BIN)/diplo schema > schemas/diplo.schema.json

bench: setup engine
	$(BIN)/python benchmarks/converge.py

bench-rollback: setup engine
	$(BIN)/python benchmarks/rollback.py

# wrk drives the load; Debian packages it.
bench-serve: setup engine
	@command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; } || { echo "install wrk first" >&2; exit 1; }
	$(BIN)/python benchmarks/serve.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
