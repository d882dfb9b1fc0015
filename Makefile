# Everything a fresh machine needs, from the project's own files.
#   make smoke   the main job: an offline sweep on the digits data, ending in a report
#   make test    ruff, mypy and the test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install smoke test lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch and torchvision as the matching pair from the package index (DESIGN.md)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

smoke: $(STAMP)
	RAY_AUTH_MODE=disabled $(PY) tune_main.py --space vit_head_mlp --preset smoke

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy rsst_tune search_spaces tune_main.py

test: lint
	RAY_AUTH_MODE=disabled $(PY) -m pytest -q

bench: $(STAMP)
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b --tiny || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info
