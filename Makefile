# Two commands from a fresh clone: `make demo` and `make test`. Both create .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test lint bench browser clean help

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
	$(VENV)/bin/ruff check src tests benchmarks hubconf.py

test: lint browser
	$(PY) -m pytest -q

# The serving page is tested in Debian's chromium (driven by Playwright); install it where apt is usable.
browser:
	@[ -x /usr/bin/chromium ] || ! command -v apt-get >/dev/null || [ "$$(id -u)" != 0 ] || \
	  (apt-get install -y -qq chromium >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium)) \
	  >/dev/null || echo "could not install chromium: the browser test will say so"

demo: $(STAMP)
	bash scripts/demo.sh

bench: $(STAMP)
	$(PY) benchmarks/bench_throughput.py

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
