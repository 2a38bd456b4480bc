# gcompiler — the two commands of the README live here.
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
EXTRAS ?= dev
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed

.PHONY: demo test test-thorough bench clean env

env: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m gcompiler demo

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider

test-thorough: $(STAMP)
	HYPOTHESIS_PROFILE=thorough $(PY) -m pytest -q -p no:cacheprovider

# CPU speed of deployed slim generators, int8 vs fp32, compile time, training cost (BENCHMARKS.md,
# "Deploy and realized speed"); about 30 minutes on a 2-core machine. BENCH_ARGS="--quick" for a smoke run.
BENCH_ARGS ?=
bench: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) bench/deploy_speed.py $(BENCH_ARGS)
	OMP_NUM_THREADS=1 $(PY) bench/deploy_profile.py --int8

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build *.egg-info
