# Two commands from a fresh clone: `make demo` and `make test`. Both create .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test lint bench clean help

help:
	@echo "make demo   - create .venv, install, train on Fashion-MNIST, evaluate and write a report"
	@echo "make test   - create .venv, install with test extras, lint and run the test suite"
	@echo "make bench  - throughput of Mixer beside ViT (and timm when installed)"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip >/dev/null
	$(PY) -m pip install -e '.[test]'
	touch $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

test: lint
	$(PY) -m pytest -q

demo: $(STAMP)
	bash scripts/demo.sh

bench: $(STAMP)
	$(PY) benchmarks/bench_throughput.py

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
