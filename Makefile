# Two commands on a fresh machine with only Python: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test demo demo-crew lint bench figures catalogs catalog clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test,homeserver]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m ruff check bot tests
	$(PY) -m mypy bot benchmarks
	$(PY) -m pytest -q -n 2 --dist worksteal

lint: $(STAMP)
	$(PY) -m ruff check bot tests
	$(PY) -m mypy bot benchmarks

# Run every suite recording what it tried (docs/reliability.json), then rewrite the
# figures table of docs/reliability.md. BLOSSOM_FUZZ_SECONDS=600 adds an atheris run
# (needs pip install -e '.[fuzz]'). Two workers, as make test: the rows are merged under a
# file lock (tests/figures.py), and serially the run took 30 minutes.
figures: $(STAMP)
	BLOSSOM_FIGURES=docs/reliability.json $(PY) -m pytest -q -n 2 --dist worksteal
	$(PY) -m bot.devtools.reliability

# After changing bot/i18n/messages.py: re-extract the template and merge it into every
# catalog (new entries come empty; tests/test_i18n_catalogs.py fails until translated).
catalogs: $(STAMP)
	$(VENV)/bin/pybabel extract -F babel.cfg -c TRANSLATORS: --no-location --sort-output \
		--project=Blossom --copyright-holder="Blossom contributors" -o bot/i18n/locale/blossom.pot .
	$(VENV)/bin/pybabel update -i bot/i18n/locale/blossom.pot -d bot/i18n/locale -D blossom \
		--no-fuzzy-matching --ignore-obsolete --ignore-pot-creation-date

# Start the catalog of a new language: make catalog LOCALE=pt_BR (the directory name is
# the POSIX form of the BCP 47 tag: pt-BR -> pt_BR, zh-Hant -> zh_Hant).
catalog: $(STAMP)
	test -n "$(LOCALE)" || (echo "usage: make catalog LOCALE=pt_BR" >&2; exit 2)
	$(VENV)/bin/pybabel init -i bot/i18n/locale/blossom.pot -d bot/i18n/locale -D blossom -l $(LOCALE)

demo: $(STAMP)
	$(VENV)/bin/blossom demo

# The same with a crew of two bots (docs/crew.md): the first stops after the
# first stage and the second takes over.
demo-crew: $(STAMP)
	$(VENV)/bin/blossom demo --crew

# The whole benchmark (about 80 min on 2 cores, then the crew's scale-out on two federating
# Synapses, roughly 40 min more at 1,000 rooms with 5 pairs; run it on a quiet machine), written to
# benchmarks/results/latest.json, then docs/performance.md and the README's headline
# regenerated from that file. BENCH_ARGS passes flags (see --help; --no-scaleout leaves the
# scale-out out, --only-scaleout measures it alone).
bench: $(STAMP)
	$(PY) -m benchmarks.fanout $(BENCH_ARGS)
	$(PY) -m benchmarks.report --write

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
