# gcompiler — the two commands of the README live here.
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
EXTRAS ?= dev
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed

.PHONY: demo test test-deps test-thorough bench clean env

env: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	# imgaug only for its quokka photo (an opt-in training photo): its own dependencies (OpenCV...) unneeded
	case ",$(EXTRAS)," in *,dev,*|*,data,*) $(PY) -m pip install -q --no-deps "imgaug==0.4.0";; esac
	touch $(STAMP)

# `make demo` on a fresh clone installs the CPU set only (torch + gcompiler + onnx/onnxruntime, no triton);
# a development env (`make env`, EXTRAS=dev) serves it too.
CORE_STAMP = $(VENV)/.installed-core

$(CORE_STAMP): pyproject.toml
	if [ ! -f $(STAMP) ]; then \
	  test -x $(PY) || $(PYTHON) -m venv $(VENV); \
	  $(PY) -m pip install -q --upgrade pip && \
	  $(PY) -m pip install -q "$(TORCH)" && \
	  $(PY) -m pip install -q -e ".[onnx]"; \
	fi
	touch $(CORE_STAMP)

demo: $(CORE_STAMP)
	$(PY) -m gcompiler demo

# headless Chromium for tests/test_report.py (the report render check); skipped with a reason when absent
test-deps:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  ( command -v apt-get >/dev/null 2>&1 && (apt-get update -qq && apt-get install -y -qq chromium) >/dev/null 2>&1 ) || \
	  echo "note: chromium not installed; tests/test_report.py skips its browser check"

# the CI suite (hypothesis profile `ci`); tests marked slow run only in test-thorough
test: $(STAMP) test-deps
	$(PY) -m pytest -q -p no:cacheprovider -m "not slow"

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
