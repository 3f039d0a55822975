# The two commands a user needs: `make run` and `make test`.
# Each creates or refreshes the project-local virtualenv .venv when pyproject.toml changed.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
CONF   ?= conf/local.yaml

.PHONY: run test lint format bench-quick clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --quiet -e '.[dev]'
	touch $(STAMP)

## run: the pipeline on the embedded demo corpus (local Spark, Delta tables under ./lakehouse), then the dataset
## notebook executed on its tables (lakehouse/report/dataset.ipynb); resumable with
## .venv/bin/python -m jobs.pipeline --conf conf/local.yaml --from STAGE
run: $(STAMP)
	$(PY) -m jobs.pipeline --conf $(CONF)
	$(PY) -m jobs.notebook --conf $(CONF)

## test: linters, type check and the whole test suite, its files shared out to two processes (a file's tests
## stay together, so its module fixtures are made once); the slowest tests are listed at the end
test: lint
	$(PY) -m pytest -n 2 --dist loadfile --durations=15

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench-quick: $(STAMP)
	for b in bench/*.py; do $(PY) $$b --quick || exit 1; done

clean:
	rm -rf lakehouse dist build *.egg-info .pytest_cache .mypy_cache .ruff_cache
