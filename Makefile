# The two commands a newcomer needs: `make demo` and `make test`.
# Both create .venv with the package and its dev tools on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Azurite, the Azure Storage emulator the tests start (pinned in tools/azurite).
AZURITE := tools/azurite/node_modules/.bin/azurite-blob

.PHONY: demo test lint typecheck pytest bench sim clean install

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

$(AZURITE): tools/azurite/package.json tools/azurite/package-lock.json
	@command -v npm >/dev/null || { echo "npm is missing: installing Debian's nodejs and npm"; \
		apt-get update -qq && apt-get install -y -qq nodejs npm; }
	cd tools/azurite && npm ci --no-audit --no-fund --omit-lockfile-registry-resolved --loglevel=error
	touch $(AZURITE)

demo: $(STAMP)
	$(BIN)/s3queue demo

lint: $(STAMP)
	$(BIN)/ruff check src tests bench examples
	$(BIN)/ruff format --check src tests bench examples

typecheck: $(STAMP)
	$(BIN)/mypy

# Two processes for the suite, then the few tests that measure a rate against the
# clock, alone, so that the other process does not starve them.
pytest: $(STAMP) $(AZURITE)
	$(BIN)/pytest -q -n 2 -m 'not alone'
	$(BIN)/pytest -q -m alone

test: lint typecheck pytest

$(VENV)/.bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	touch $(VENV)/.bench

bench: $(VENV)/.bench
	$(BIN)/python -m bench all --chart docs/bench-throughput.png

# The simulation's bar (docs/SIMULATION.md): the fault scenario at 100 pods on 200
# seeds (10 s of load each, then the drain), about 20 minutes on 2 cores. `make test`
# runs two 60 s ones.
sim: $(STAMP)
	$(BIN)/python -m bench.sim faults --pods 100 --shards 16 --rate 10 --seconds 10 \
		--warmup 5 --seeds 200 --jobs 2

clean:
	rm -rf $(VENV) .demo .pytest_cache .mypy_cache .ruff_cache tools/azurite/node_modules
