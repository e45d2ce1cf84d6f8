# Two commands on a fresh machine: `make demo` and `make test` (both create .venv and install first).
# TORCH pins the torch build: the default is the CPU wheel this project is tested with; GPU users can
# run e.g. `make test TORCH=torch` to take their platform's default build.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
PYTEST_ARGS ?=
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test demo demo-full benchmarks clean

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

demo: install
	$(VENV)/bin/lit-unlearn demo

demo-full: install
	$(VENV)/bin/lit-unlearn demo --full

clean:
	rm -rf $(VENV) outputs .pytest_cache
