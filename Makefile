# Two commands on a fresh machine with only Python: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test demo lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test,homeserver]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m ruff check bot tests
	$(PY) -m mypy bot
	$(PY) -m pytest -q

lint: $(STAMP)
	$(PY) -m ruff check bot tests
	$(PY) -m mypy bot

demo: $(STAMP)
	$(VENV)/bin/blossom demo

bench: $(STAMP)
	$(PY) -m benchmarks.fanout

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
