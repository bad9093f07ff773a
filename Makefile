# Two set-up commands for a fresh machine with Python 3.11+ and make:
#   make up    install into .venv, then run the whole stack locally
#   make test  install into .venv, then run the tests
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: up test lint bench clean

$(BIN)/brkcoin: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

up: $(BIN)/brkcoin
	$(BIN)/brkcoin up

test: $(BIN)/brkcoin
	sh infra/install-browser.sh
	$(BIN)/ruff check .
	$(BIN)/pytest

bench: $(BIN)/brkcoin
	$(BIN)/brkcoin bench

clean:
	rm -rf $(VENV) .brkcoin .pytest_cache
