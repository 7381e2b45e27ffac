# Two commands a new user needs; each creates the environment (.venv) when it is missing.
#   make run    the whole experiment (needs a CUDA GPU; see README for the CPU quick config)
#   make test   the test suite (CPU, minutes)
VENV ?= .venv
PYTHON ?= python3
STAMP := $(VENV)/.installed

.PHONY: run quick test lint report clean-env

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -c constraints.txt -e ".[test]"
	touch $@

run: $(STAMP)
	$(VENV)/bin/snakemake --cores 1 --resources gpu=1

quick: $(STAMP)
	$(VENV)/bin/snakemake --cores 2 --configfile=config/quick.yaml

test: $(STAMP)
	$(VENV)/bin/python -m pytest

lint: $(STAMP)
	$(VENV)/bin/snakemake --lint

report: $(STAMP)
	$(VENV)/bin/snakemake --report results/report.html

clean-env:
	rm -rf $(VENV)
