# Two commands on a fresh machine with only Python: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test demo lint bench figures clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test,homeserver]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m ruff check bot tests
	$(PY) -m mypy bot
	$(PY) -m pytest -q -n 2 --dist worksteal

lint: $(STAMP)
	$(PY) -m ruff check bot tests
	$(PY) -m mypy bot

# Run every suite recording what it tried (docs/reliability.json), then rewrite the
# figures table of docs/reliability.md. BLOSSOM_FUZZ_SECONDS=600 adds an atheris run
# (needs pip install -e '.[fuzz]').
figures: $(STAMP)
	BLOSSOM_FIGURES=docs/reliability.json $(PY) -m pytest -q
	$(PY) -m bot.devtools.reliability

demo: $(STAMP)
	$(VENV)/bin/blossom demo

bench: $(STAMP)
	$(PY) -m benchmarks.fanout

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
