# Two commands (see README): `make main` and `make test`. Everything else is what they call.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_DATA  := dataset-fashion-mnist
APT_SLURM := slurmctld slurmd slurm-client munge slurmdbd mariadb-server
# + the browser (and a font) tests/test_report_page.py renders the report in
APT_TEST  := $(APT_SLURM) chromium fonts-dejavu-core

.PHONY: setup setup-apt setup-slurm main test lint bench clean-results

setup: setup-apt $(VENV)/.installed

# Debian packages: offline datasets (and SLURM and Chromium for the tests, installed by setup-slurm).
setup-apt:
	@dpkg -s $(APT_DATA) >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $(APT_DATA); }

setup-slurm:
	@dpkg -s $(APT_TEST) >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $(APT_TEST); }

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -U pip
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip install -q --no-deps animal-mnist
	touch $@

# The main job on the local default executor (results under ./results, logs under ./logs).
main: setup
	$(VENV)/bin/harness run benchmarks/quick.yaml

# Tests against the real local SLURM cluster (started if not up) and a real local Ray.
test: setup setup-slurm
	$(SUDO) slurm/up
	HARNESS_REQUIRE_SLURM=1 HARNESS_REQUIRE_CHROMIUM=1 $(PY) -m pytest -q -ra; rc=$$?; [ $$rc = 5 ] && rc=1; exit $$rc

lint:
	$(VENV)/bin/ruff check harness tests benchmarks
	$(VENV)/bin/ruff format --check harness tests benchmarks

bench: setup
	$(PY) benchmarks/bench_cli.py
	$(PY) benchmarks/bench_nc.py
	$(PY) benchmarks/bench_finetune.py
