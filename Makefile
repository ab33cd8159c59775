# Two commands do all the set-up on a fresh CPU machine:
#   make demo   — toy try-on demo end to end (writes outputs/demo.png)
#   make test   — the whole test suite (tests/ + every notebook under nbval)
# On a machine with a GPU (or Colab) install your CUDA torch first and use `pip install -e ".[dev]"` directly.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: demo test setup clean-venv

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# the CPU wheel first: a bare `torch` requirement would pull a multi-GB CUDA build
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/ootd demo

test: $(STAMP)
	$(BIN)/python -m pytest -q --nbval-lax tests notebooks

clean-venv:
	rm -rf $(VENV)
