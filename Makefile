# Two entry points for a fresh machine (only Python >= 3.10 and a C compiler assumed):
#   make demo   set up .venv and run Augury on the built-in synthetic scene
#   make test   set up .venv with the test extras and run the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: demo test lint bench clean lava-test

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.core: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test,aedat4]'
	touch $@

demo: $(VENV)/.core
	$(BIN)/augury demo

test: $(VENV)/.test
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

lint: $(VENV)/.test
	$(BIN)/ruff check .

bench: $(VENV)/.test
	$(BIN)/python -m tools.bench.decode --quick

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
