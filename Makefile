# Entry points for a fresh machine (only Python >= 3.10 and a C compiler assumed):
#   make demo              set up .venv and run Augury on the built-in synthetic scene
#   make demo-adaptation   the same setup, then the adaptation demo with its live dashboard
#   make test              set up .venv with the test extras and run the test suite
#                          (the dashboard's browser tests also need Debian's chromium:
#                          `make browser` installs it when run as root; .ci/run does)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PYTEST_ARGS ?=
# lava-nc 0.10.0 needs Python < 3.11: `make lava-test` builds its own venv with this interpreter
LAVA_PYTHON ?= $(shell p=$$(pyenv prefix 3.10.13 2>/dev/null) && echo $$p/bin/python \
                 || command -v python3.10)
LAVA_VENV   ?= .venv-lava

.PHONY: demo demo-adaptation test lint bench clean lava-test browser

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.core: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dashboard]'
	touch $@

$(VENV)/.test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test,aedat4]'
	touch $@

demo: $(VENV)/.core
	$(BIN)/augury demo

demo-adaptation: $(VENV)/.core
	$(BIN)/augury demo adaptation

# Debian's chromium for the dashboard's browser tests (Playwright drives it through
# executable_path; Playwright's own browser downloads are never used).
browser:
	@if command -v chromium >/dev/null 2>&1; then echo "chromium: $$(command -v chromium)"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	else echo "!!! chromium is missing and cannot be installed here (needs root and apt-get):" \
		"the dashboard browser tests will SKIP" >&2; fi

test: $(VENV)/.test
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

lint: $(VENV)/.test
	$(BIN)/ruff check .

$(LAVA_VENV)/.lava: pyproject.toml
	@"$(LAVA_PYTHON)" -c 'import sys; sys.exit(not (3, 8) <= sys.version_info[:2] < (3, 11))' \
		2>/dev/null || { echo "lava-test: '$(LAVA_PYTHON)' is not a Python 3.8-3.10" \
		"(lava-nc 0.10.0 needs one; set LAVA_PYTHON=/path/to/python3.10)"; exit 2; }
	$(LAVA_PYTHON) -m venv $(LAVA_VENV)
	$(LAVA_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(LAVA_VENV)/bin/python -m pip install --quiet -e '.[lava]' 'pytest>=7.4'
	touch $@

# the Lava backend's tests (tests/lava, skipped by `make test` on 3.11) in the 3.10 venv; they
# need only the core dependencies, lava-nc and pytest (not the test extra)
lava-test: $(LAVA_VENV)/.lava
	$(LAVA_VENV)/bin/python -m pytest -q -p no:cacheprovider tests/lava tests/test_lava_optional.py $(PYTEST_ARGS)

bench: $(VENV)/.test
	$(BIN)/python -m tools.bench.decode --quick

clean:
	rm -rf $(VENV) $(LAVA_VENV) build *.egg-info .pytest_cache .hypothesis
