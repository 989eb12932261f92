# cvit recipes. Every recipe creates the environment in .venv first if it is missing.
PY       := .venv/bin/python
CVIT     := .venv/bin/cvit
TORCH    := torch==2.13.0
WORK     ?= work
CONFIG   ?= configs/experiment/demo.yaml
ARGS     ?=

.PHONY: install demo test lint bench run clean

.venv/.installed: pyproject.toml
	python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

install: .venv/.installed

demo: install
	$(CVIT) demo --work $(WORK)

test: install
	$(PY) -m pytest tests

lint: install
	.venv/bin/ruff check .

bench: install
	$(PY) scripts/bench.py

run: install
	$(CVIT) fit -c $(CONFIG) $(ARGS)

clean:
	rm -rf $(WORK)
