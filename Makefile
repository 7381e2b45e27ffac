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

# Two workers, one test file each at a time (module fixtures are built once): the SLURM tests,
# mostly waiting, overlap the rest. Plain `pytest` runs the same tests one after the other.
test: $(STAMP)
	$(VENV)/bin/python -m pytest -n 2 --dist loadfile

lint: $(STAMP)
	$(VENV)/bin/snakemake --lint
	$(VENV)/bin/ruff check .
	$(VENV)/bin/snakefmt --check Snakefile workflow/rules

report: $(STAMP)
	$(VENV)/bin/snakemake --report results/report.html

clean-env:
	rm -rf $(VENV)
