# Everything a fresh machine needs, from the project's own files.
#   make smoke   the main job: an offline sweep on the digits data, ending in a report
#   make test    ruff (lint + format check), mypy --strict and the whole test suite (the tests
#                without Ray on 2 workers, then the Ray sweeps one at a time)
#   make test-fast  the inner loop: lint and the tests without Ray sweeps or slow training
#   make test-oldest  the tests of test-fast on the oldest supported Python (3.10), torch
#                (2.11), torchvision, Ray, Optuna and timm (constraints/oldest.txt), in .venv-oldest
#   make gpu-check  on a CUDA machine: the CUDA tests, throughput, a fractional-GPU sweep and
#                   exported latency in one table (< 8 min on one H100); without CUDA it says
#                   so in one line and exits 0
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Python 3.10 for test-oldest: pyenv's, else a python3.10 on PATH that runs
OLDEST_PYTHON ?= $(shell for p in $(wildcard $(HOME)/.pyenv/versions/3.10*/bin/python) python3.10; do \
	$$p -c 'import sys; assert sys.version_info[:2] == (3, 10)' 2>/dev/null && { echo $$p; break; }; done)
OLDEST_VENV   ?= .venv-oldest
OLDEST_STAMP  := $(OLDEST_VENV)/.installed

.PHONY: install smoke test test-fast test-oldest lint bench gpu-check clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch and torchvision come together from the package index: a torchvision built for
	# another torch fails at import. constraints/tested.txt: the versions CI last tested
	$(PY) -m pip install --quiet -c constraints/tested.txt -e '.[dev]'
	touch $(STAMP)

$(OLDEST_STAMP): pyproject.toml constraints/oldest.txt
	@test -n "$(OLDEST_PYTHON)" || { echo "make test-oldest: no Python 3.10 here; pass OLDEST_PYTHON=/path/to/python3.10" >&2; exit 1; }
	$(OLDEST_PYTHON) -m venv $(OLDEST_VENV)
	$(OLDEST_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(OLDEST_VENV)/bin/python -m pip install --quiet -c constraints/oldest.txt -e '.[dev]'
	touch $(OLDEST_STAMP)

smoke: $(STAMP)
	RAY_AUTH_MODE=disabled $(PY) tune_main.py --space vit_head_mlp --preset smoke

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy rsst_tune search_spaces tune_main.py

# Tests that start no Ray run on 2 workers; the Ray sweeps then run one at a time (they time
# signals and process exits, which a second sweep on a 2-core machine delays)
test: lint
	RAY_AUTH_MODE=disabled $(PY) -m pytest -q -n 2 -m "not sweep"
	RAY_AUTH_MODE=disabled $(PY) -m pytest -q -m sweep

test-fast: lint
	RAY_AUTH_MODE=disabled $(PY) -m pytest -q -n 2 -m "not slow and not sweep"

test-oldest: $(OLDEST_STAMP)
	$(OLDEST_VENV)/bin/python -c "import sys, torch, torchvision, ray, optuna, timm; print('oldest:', 'Python', sys.version.split()[0], 'torch', torch.__version__, 'torchvision', torchvision.__version__, 'ray', ray.__version__, 'optuna', optuna.__version__, 'timm', timm.__version__)"
	RAY_AUTH_MODE=disabled $(OLDEST_VENV)/bin/python -m pytest -q -n 2 -p no:cacheprovider -m "not slow and not sweep"

bench: $(STAMP)
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b --tiny || exit 1; done

gpu-check: $(STAMP)
	RAY_AUTH_MODE=disabled $(PY) benchmarks/gpu_check.py

clean:
	rm -rf $(VENV) $(OLDEST_VENV) build *.egg-info
