# Everything bootstraps .venv from nothing; re-running is fast once it is set up.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test bench lint typecheck clean venv

venv: $(STAMP)

# openoa==3.2 ships the la-haute-borne training data (examples/data/la_haute_borne.zip) and
# nothing else we use; its own dependencies are heavy and unneeded, and an extra cannot say
# --no-deps, hence its own step (a no-op once that version is installed).
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[train,dev]'
	$(PY) -m pip install --quiet --no-deps openoa==3.2
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/sensorcast demo $(ARGS)

# Two workers, each taking whole test files (module-scoped brokers stay in one worker); most
# of the suite waits on brokers and group joins, so this halves its wall time on 2 cores.
test: $(STAMP)
	$(PY) -m pytest -n 2 --dist loadfile $(ARGS)

bench: $(STAMP)
	$(PY) -m bench $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check service training tests bench
	$(VENV)/bin/ruff format --check service training tests bench

typecheck: $(STAMP)
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
