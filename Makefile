# Everything a fresh machine needs, from the project's own files.
#   make smoke   the main job: an offline sweep on the digits data, ending in a report
#   make test    ruff (lint + format check), mypy --strict and the whole test suite (the tests
#                without Ray on 2 workers, then the Ray sweeps one at a time)
#   make test-fast  the inner loop: lint and the tests without Ray sweeps or slow training
#   make gpu-check  on a CUDA machine: the CUDA tests, throughput, a fractional-GPU sweep and
#                   exported latency in one table (< 8 min on one H100); without CUDA it says
#                   so in one line and exits 0
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install smoke test test-fast lint bench gpu-check clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch and torchvision come together from the package index: a torchvision built for
	# another torch fails at import
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

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

bench: $(STAMP)
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b --tiny || exit 1; done

gpu-check: $(STAMP)
	RAY_AUTH_MODE=disabled $(PY) benchmarks/gpu_check.py

clean:
	rm -rf $(VENV) build *.egg-info
