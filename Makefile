# Two set-up commands for a fresh machine with Python 3.11+ and make:
#   make up    install into .venv, then run the whole stack locally
#   make test  install into .venv, then run the tests
# As root, `make test-containers` builds the images and runs the stack under podman.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# Test processes: most tests wait on real processes, so two share the 2 cores
# the suite is sized for (three were faster, and flaked a timing test); tests
# marked `alone` (they measure speed) run after, one at a time.
TEST_PROCESSES ?= 2

.PHONY: up test test-containers typecheck lint bench clean

$(BIN)/brkcoin: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

up: $(BIN)/brkcoin
	$(BIN)/brkcoin up

test: $(BIN)/brkcoin
	sh infra/install-browser.sh
	sh infra/install-prometheus.sh
	$(BIN)/ruff check .
	$(MAKE) typecheck
	$(BIN)/pytest -n $(TEST_PROCESSES) --dist loadfile -m "not alone"
	$(BIN)/pytest -m alone

# Strict types. Each function folder is checked on its own: every one has a
# module named main, and the worker's siblings import as top-level modules.
typecheck: $(BIN)/brkcoin
	$(BIN)/mypy infra/brkcoin
	for folder in functions/rng functions/hasher functions/worker webui; do \
	  (cd $$folder && $(CURDIR)/$(BIN)/mypy --config-file $(CURDIR)/pyproject.toml \
	    --explicit-package-bases --cache-dir $(CURDIR)/.mypy_cache/$$(basename $$folder) *.py) \
	    || exit 1; \
	done

test-containers: $(BIN)/brkcoin
	sh infra/container/test/run.sh

bench: $(BIN)/brkcoin
	$(BIN)/brkcoin bench

clean:
	rm -rf $(VENV) .brkcoin .pytest_cache
