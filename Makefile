# The two commands a newcomer needs: `make reproduce` and `make test`.
# Each bootstraps .venv from requirements.txt (a stamp file makes the second run install nothing).
# Nothing here installs system packages or needs root.
PYTHON  ?= python3.11
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.deps-installed
PROFILE ?= ci
NB      ?=
RESULTS ?= results
RESUME  ?=

# PROFILE, NB, RESULTS and RESUME reach the recipes only as environment variables ("$$PROFILE" below):
# the shell never parses their values, and python -m passk_companion validates them.
export PROFILE NB RESULTS RESUME

# Determinism: one thread for every BLAS/OpenMP pool, fixed hash seed, no progress bars in stored outputs.
export OMP_NUM_THREADS=1
export MKL_NUM_THREADS=1
export OPENBLAS_NUM_THREADS=1
export PYTHONHASHSEED=0
export TQDM_DISABLE=1
# Kernels draw inline whatever the caller's shell exports (MPLBACKEND=Agg on many headless servers
# would make plt.show() display nothing): the same outputs for everyone. `unit` sets Agg itself.
unexport MPLBACKEND

NOTEBOOKS := $(sort $(wildcard notebooks/[0-9]*.ipynb))
NBVAL     := --nbval --nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg

.DELETE_ON_ERROR:
.PHONY: venv test lint unit nbval test-dispatch execute reproduce html lab clean help

help:
	@echo "make reproduce [PROFILE=ci|full|gpu] [NB=01] [RESULTS=dir] [RESUME=1]  execute notebooks into results/"
	@echo "make test                    ruff + pytest (incl. benchmark quick modes) + nbval (CI)"
	@echo "make test-dispatch           after make test: nbval of 04 and 06 under AVX2 kernels (CI)"
	@echo "make test-py312              the torch-free tests on Python 3.12 in .venv-py312 (CI)"
	@echo "make execute [NB=01]         regenerate the stored notebook outputs (ci profile)"
	@echo "make html [RESULTS=dir]      render the results into results/site (after reproduce)"
	@echo "make lab                     JupyterLab on notebooks/ with the project's kernel"

venv: $(STAMP)
$(STAMP): requirements.txt constraints.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -r requirements.txt -e .
	$(BIN)/python -c "from passk_companion.lab import ensure_kernel; ensure_kernel()"
	touch $@

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks notebooks
	$(BIN)/ruff format --check src tests benchmarks

# pytest exits 5 when it collects nothing: treat that as "nothing to check", not a failure.
unit: $(STAMP)
	PASSK_COMPANION_RESULTS=build/test-results MPLBACKEND=Agg $(BIN)/python -m pytest -q -rs -n 2 tests; \
	  rc=$$?; [ $$rc -eq 5 ] && rc=0; exit $$rc

# Then the claims the notebooks recorded must equal the stored ones (notebooks/claims/*.csv), from
# which `python -m passk_companion report --tables` generates the documentation's tables.
nbval: $(STAMP)
	@if [ -z "$(NOTEBOOKS)" ]; then echo "no notebooks to check"; else \
	  rm -rf build/test-results/claims; \
	  PASSK_COMPANION_RESULTS=build/test-results $(BIN)/python -m pytest -q -n 2 --dist loadfile \
	    $(NBVAL) -o testpaths= $(NOTEBOOKS); rc=$$?; [ $$rc -eq 5 ] && rc=0; \
	  if [ $$rc -eq 0 ]; then $(BIN)/python -m passk_companion compare-claims build/test-results \
	    notebooks || rc=1; fi; exit $$rc; fi

# Another CPU's kernels, emulated from outside (the library never sets these variables): nbval
# re-executes the training notebooks with ATen and MKL held to AVX2 and compares them with the
# same stored outputs; then their claims must equal those of `make nbval` (run first, as
# `make test` does): the same verdicts, intervals and text. .ci/run runs it after `make test`.
DISPATCH_NOTEBOOKS := $(sort $(wildcard notebooks/04_*.ipynb notebooks/06_*.ipynb))
test-dispatch: $(STAMP)
	@test -d build/test-results/claims || { echo "run make nbval (or make test) first"; exit 2; }
	rm -rf build/test-results-dispatch
	ATEN_CPU_CAPABILITY=avx2 MKL_CBWR=COMPATIBLE ONEDNN_MAX_CPU_ISA=AVX2 \
	  PASSK_COMPANION_RESULTS=build/test-results-dispatch $(BIN)/python -m pytest -q -n 2 \
	  --dist loadfile $(NBVAL) -o testpaths= $(DISPATCH_NOTEBOOKS)
	$(BIN)/python -m passk_companion compare-claims build/test-results build/test-results-dispatch \
	  --nb "04 06"

test: lint unit nbval

# Stored outputs are produced only here: papermill at the default (ci) profile through a
# temporary file, then papermill's volatile metadata stripped (outputs and counts kept for nbval).
execute: $(STAMP)
	$(BIN)/python -m passk_companion execute --nb "$$NB"

# Executed copies go to $RESULTS/notebooks (atomically); the stored notebooks are never touched.
# RESUME=1 keeps the sweep trials an interrupted run of the same command finished.
reproduce: $(STAMP)
	$(BIN)/python -m passk_companion reproduce --profile "$$PROFILE" --nb "$$NB" --results "$$RESULTS" \
	  --resume "$$RESUME"

# A static site of the executed notebooks (run make reproduce first).
html: $(STAMP)
	$(BIN)/python -m passk_companion html --results "$$RESULTS"

# JupyterLab on notebooks/ with the project's kernel (registered inside .venv).
lab: $(STAMP)
	$(BIN)/python -m passk_companion.lab

clean:
	rm -rf $(VENV) build

# The trainer integrations (verl plugin, TRL trainer, diagnose on their logs) in their own venv:
# verl pins transformers below 5.11, so neither verl nor TRL enters .venv. torch first, from the
# local CPU wheel (an unpinned torch would pull a CUDA build); then the extras [verl,trl] under
# the pins of constraints.txt, all but packaging (verl's pyvers needs packaging < 26).
IVENV  := .venv-integrations
ISTAMP := $(IVENV)/.deps-installed
.PHONY: test-integrations
$(ISTAMP): requirements.txt constraints.txt pyproject.toml
	test -x $(IVENV)/bin/python || $(PYTHON) -m venv $(IVENV)
	sed '/^packaging==/d' constraints.txt > $(IVENV)/constraints.txt
	$(IVENV)/bin/python -m pip install -q --disable-pip-version-check torch==2.13.0
	$(IVENV)/bin/python -m pip install -q --disable-pip-version-check \
	  -c $(IVENV)/constraints.txt -e '.[verl,trl]' $$(grep -E '^(pytest|hypothesis)==' requirements.txt)
	touch $@

test-integrations: $(ISTAMP)
	PASSK_COMPANION_REQUIRE_INTEGRATIONS=1 PASSK_COMPANION_RESULTS=build/test-results-integrations \
	  MPLBACKEND=Agg $(IVENV)/bin/python -m pytest -q -rs tests/integrations

# Python 3.12 (pyproject's requires-python is >=3.11,<3.13): the torch-free tests (the evidence,
# files, the layout and the writing rules) in their own venv, .venv-py312, with the package
# installed by pip (which checks requires-python) and the libraries those tests import, under the
# pins of constraints.txt. The suites that need torch (theory, objectives, the diagnostic) run
# under 3.11 in make test: the package index serves torch for 3.12 only as the CUDA build.
# PYTHON312: python3.12 on PATH if it runs, else a pyenv 3.12 interpreter.
PYTHON312 ?= $(shell if python3.12 -c '' 2>/dev/null; then echo python3.12; else \
  ls -d $(HOME)/.pyenv/versions/3.12*/bin/python3.12 2>/dev/null | tail -n 1; fi)
P312      := .venv-py312
P312STAMP := $(P312)/.deps-installed
P312TESTS := tests/evidence tests/test_files.py tests/test_layout.py tests/test_writing.py
.PHONY: test-py312
$(P312STAMP): requirements.txt constraints.txt pyproject.toml
	@test -n "$(PYTHON312)" || { echo "no python3.12 found: set PYTHON312=/path/to/python3.12"; exit 2; }
	test -x $(P312)/bin/python || $(PYTHON312) -m venv $(P312)
	$(P312)/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt \
	  $$(grep -E '^(numpy|scipy|pandas|pyyaml|matplotlib|seaborn|nbformat|nbclient|papermill|ipykernel|tqdm|pytest|pytest-xdist|hypothesis)==' \
	    requirements.txt) nbconvert bleach
	$(P312)/bin/python -m pip install -q --disable-pip-version-check --no-deps -e .
	touch $@

test-py312: $(P312STAMP)
	$(P312)/bin/python -c "import sys; assert sys.version_info[:2] == (3, 12), sys.version"
	PASSK_COMPANION_RESULTS=build/test-results-py312 MPLBACKEND=Agg $(P312)/bin/python -m pytest \
	  -q -rs -n 2 $(P312TESTS); rc=$$?; [ $$rc -eq 5 ] && rc=0; exit $$rc
