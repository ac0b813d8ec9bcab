# Quick start: `make demo` and `make test` on a fresh machine (network: package registries only).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The default torch wheel (CUDA build) runs on CPU; torch and torchvision are installed as a pair.
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: demo test venv clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -q "torch" "torchvision"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)

demo: venv
	$(BIN)/medtransfer demo

test: venv
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) demo-report
