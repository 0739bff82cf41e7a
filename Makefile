# Set-up and the two commands a newcomer needs:
#   make        .venv with torch and requirements.txt, then the main job (python train.py)
#   make test   the same plus requirements-dev.txt, then the tests (python -m pytest -q)
# ARGS goes to train.py or pytest: make ARGS="config/plain.py --max_iters=100", make test ARGS="-x tests/test_ngram.py".
# Each install step leaves a stamp in .venv and reruns only when its requirements file changes, so the second
# `make test` goes straight to pytest; deleting .venv starts over.
#
# torch comes first, so requirements.txt's torch>=2.4 is already met and pip does not choose a build. Without a CUDA
# GPU (no nvidia-smi on PATH) that is the CPU build from PyTorch's CPU index: plain `pip install torch` on Linux pulls
# the CUDA build, gigabytes of GPU libraries a CPU cannot use. With nvidia-smi it is PyPI's torch, the CUDA build.
# A torch already in .venv is kept, whichever it is: that is how a pin is chosen (CI installs its torch==2.13.0
# first, offline but for PyPI, where the CPU index cannot be reached), and how a user's own build survives. TORCH
# overrides the choice: make TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu".
PYTHON ?= python3
TORCH ?= $(if $(shell command -v nvidia-smi),torch,torch --index-url https://download.pytorch.org/whl/cpu)
ARGS ?=
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test
run: $(VENV)/.requirements
	$(BIN)/python train.py $(ARGS)

test: $(VENV)/.requirements-dev
	$(BIN)/python -m pytest -q $(ARGS)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.torch: | $(BIN)/python
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q $(TORCH)
	touch $@

$(VENV)/.requirements: requirements.txt $(VENV)/.torch
	$(BIN)/pip install -q -r requirements.txt
	touch $@

$(VENV)/.requirements-dev: requirements-dev.txt $(VENV)/.requirements
	$(BIN)/pip install -q -r requirements-dev.txt
	touch $@
