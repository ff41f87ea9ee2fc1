# The README's two commands live here: `make demo` (with its issue) and `make test`.
# `make test` must work on a fresh machine that has only Python 3.11+, Node 20 and apt.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
NODE_STAMP := node_modules/.installed

RUNTIME_STAMP := $(VENV)/.runtime-installed

.PHONY: install node chromium test test-fast lint typecheck unit test-pyodide bench demo vectors obp-vectors clean

install: $(STAMP)

# The demo needs only the runtime dependencies: quicker on a fresh machine than the dev set.
$(RUNTIME_STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	touch $@

demo: $(RUNTIME_STAMP)
	$(BIN)/perch demo --profiles --exit --data-dir .perch/demo-profiles
	$(BIN)/perch demo

# Pyodide (to run the Worker's Python in tests) and wrangler (to validate its config), exactly as
# package-lock.json pins them for this platform.
# Not `npm ci`: it fails whenever the registry adds a platform build (workerd darwin/win) the lock lacks.
node: $(NODE_STAMP)

$(NODE_STAMP): package.json package-lock.json tools/npm_locked_install.py
	$(PYTHON) tools/npm_locked_install.py
	touch $@

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

CHROMIUM ?= /usr/bin/chromium

# The dashboard's browser test drives Debian's Chromium through Playwright; browsers cannot be
# downloaded here. Installed when missing; in CI the test fails rather than skips without it.
chromium:
	@test -x $(CHROMIUM) || { \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

# Two workers (the machines this runs on have two cores). --dist loadfile keeps each file on one
# worker: its module-scoped servers (the Pyodide harness, the end-to-end loop) start once, and
# test_end_to_end's checks build on each other. Each worker has its own PostgreSQL database.
WORKERS ?= 2

unit: install node chromium
	$(BIN)/pytest -n $(WORKERS) --dist loadfile
	# Benchmarks run once each as plain tests so they cannot rot between `make bench` runs.
	$(BIN)/pytest benchmarks --benchmark-disable -q

test: lint typecheck unit

# The inner loop: unit tests that need no Node, PostgreSQL, browser or child process, on 2 workers.
FAST := not (slow or postgres or pyodide or node or browser or process)
test-fast: install
	$(BIN)/pytest -q -n $(WORKERS) --dist loadfile -m "$(FAST)"

# The Worker in real Pyodide under Node, and wrangler's check of its config.
test-pyodide: install node
	$(BIN)/pytest tests/pyodide tests/test_wrangler.py

# Every benchmark in one run (~26 min on 2 cores, 20 of them the learning-quality simulations); writes benchmarks/RESULTS.md.
BENCH_STAMP := $(VENV)/.bench-installed

$(BENCH_STAMP): pyproject.toml $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	touch $@

bench: $(BENCH_STAMP) node
	$(BIN)/python -m benchmarks.run

# Rewrites tests/vectors/*.json from the current code. Only for a deliberate,
# versioned change of hashing or decisions: the vectors are the contract.
vectors: install
	$(BIN)/python -m tests.vectors.generate --force

# Rewrites tests/control_plane/learning/obp_slates.json: Open Bandit Pipeline's slate estimators on
# synthetic logs, which Perch's must match (issue 15). OBP 0.5.7 pins old dependencies, so it gets
# a virtualenv of its own (and no torch: tools/obp_slates.py loads the estimators without it).
OBP_VENV := .cache/obp-venv
obp-vectors:
	python3 -m venv $(OBP_VENV)
	$(OBP_VENV)/bin/pip install --quiet --no-deps --ignore-requires-python obp==0.5.7
	$(OBP_VENV)/bin/pip install --quiet numpy 'pandas<3' scipy scikit-learn
	$(OBP_VENV)/bin/python -W ignore tools/obp_slates.py

clean:
	rm -rf $(VENV) node_modules .cache .pytest_cache .mypy_cache .ruff_cache .hypothesis .benchmarks
