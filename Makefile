# The two commands a newcomer needs: `make reproduce` and `make test`.
# Each bootstraps .venv from requirements.txt (a stamp file makes the second run install nothing).
PYTHON  ?= python3.11
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.deps-installed
PROFILE ?= ci
NB      ?=
RESULTS ?= results

# Determinism: one thread for every BLAS/OpenMP pool, fixed hash seed, no progress bars in stored outputs.
export OMP_NUM_THREADS=1
export MKL_NUM_THREADS=1
export OPENBLAS_NUM_THREADS=1
export PYTHONHASHSEED=0
export TQDM_DISABLE=1

NOTEBOOKS := $(sort $(wildcard notebooks/[0-9]*.ipynb))
SELECTED  := $(if $(NB),$(filter $(addprefix notebooks/,$(addsuffix %,$(NB))),$(NOTEBOOKS)),$(NOTEBOOKS))
STRIP     := $(BIN)/nbstripout --keep-output --keep-count \
             --extra-keys "metadata.papermill cell.metadata.papermill cell.metadata.execution"
NBVAL     := --nbval --nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg

.DELETE_ON_ERROR:
.PHONY: venv test lint browser unit nbval execute reproduce html clean help

help:
	@echo "make reproduce [PROFILE=ci|full] [NB=01]  execute notebooks into $(RESULTS)/"
	@echo "make test                                 ruff + pytest + nbval (what CI runs)"
	@echo "make execute [NB=01]                      regenerate the stored notebook outputs (ci profile)"
	@echo "make html                                 render results/ to results/site (after reproduce)"

venv: $(STAMP)
$(STAMP): requirements.txt constraints.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -r requirements.txt -e .
	touch $@

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks notebooks
	$(BIN)/ruff format --check src tests benchmarks

# pytest exits 5 when it collects nothing: treat that as "nothing to check", not a failure.
unit: $(STAMP)
	COMPANION_REQUIRE_BROWSER=1 COMPANION_RESULTS=build/test-results MPLBACKEND=Agg $(BIN)/python -m pytest -q -n 2 tests; \
	  rc=$$?; [ $$rc -eq 5 ] && rc=0; exit $$rc

nbval: $(STAMP)
	@if [ -z "$(NOTEBOOKS)" ]; then echo "no notebooks to check"; else \
	  COMPANION_RESULTS=build/test-results $(BIN)/python -m pytest -q -n 2 --dist loadfile \
	    $(NBVAL) -o testpaths= $(NOTEBOOKS); rc=$$?; [ $$rc -eq 5 ] && rc=0; exit $$rc; fi

# The site test drives headless Chromium (Debian's package); install it when missing.
browser:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; } \
	  || { echo "could not install chromium (needed by tests/test_site.py)"; exit 1; }

test: lint browser unit nbval

# Stored outputs are produced only here: papermill in place at the default (ci) profile, then strip
# the volatile papermill metadata while keeping outputs and execution counts (nbval needs both).
execute: $(STAMP)
	@for nb in $(SELECTED); do \
	  echo "== executing $$nb"; \
	  COMPANION_RESULTS=build/execute-results $(BIN)/papermill --no-progress-bar "$$nb" "$$nb" --cwd notebooks || exit 1; \
	  $(STRIP) "$$nb" || exit 1; \
	done

# Executed copies go to $(RESULTS)/notebooks; the stored notebooks are never touched.
reproduce: $(STAMP)
	@case "$(PROFILE)" in ci|full) ;; *) echo "unknown PROFILE '$(PROFILE)' (use ci or full)"; exit 2;; esac
	@mkdir -p $(RESULTS)/notebooks
	@for nb in $(SELECTED); do \
	  stem=$$(basename "$$nb" .ipynb); params=params/$(PROFILE)/$$stem.yaml; \
	  extra=""; [ -f "$$params" ] && extra="-f $$params"; \
	  echo "== $$stem (profile $(PROFILE))"; \
	  COMPANION_RESULTS=$(CURDIR)/$(RESULTS) $(BIN)/papermill --no-progress-bar "$$nb" \
	    "$(RESULTS)/notebooks/$$stem.ipynb" $$extra --cwd notebooks || exit 1; \
	done
	@COMPANION_RESULTS=$(CURDIR)/$(RESULTS) $(BIN)/python -m companion report

# A static site of the executed notebooks (run make reproduce first).
html: $(STAMP)
	COMPANION_RESULTS=$(CURDIR)/$(RESULTS) $(BIN)/python -m companion html

clean:
	rm -rf $(VENV) build
