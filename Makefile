# Two commands for a newcomer:  make reproduce   and   make test
# PROFILE selects the run size: smoke (tests), demo (default), paper (GPU).
# make PROFILE=x wins over an exported RPNET_PROFILE, which wins over the default (demo).
PROFILE := $(or $(PROFILE),$(RPNET_PROFILE),demo)
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
NOTEBOOKS := $(sort $(wildcard notebooks/0*.ipynb))
NBVAL_FLAGS := --nbval-lax --nbval-current-env --sanitize-with tests/nbval_sanitize.cfg \
	--nbval-cell-timeout=1800 -p no:cacheprovider
export TF_CPP_MIN_LOG_LEVEL := 2
export PYTHONHASHSEED := 0
export PYTHONUTF8 := 1
# Stored notebook outputs: static montages instead of widgets, one line per progress bar
# (utils.viewer, utils.progress). `make lab` unsets it for interactive sessions.
export RPNET_STATIC_FIGURES := 1

.PHONY: help setup data reproduce readme test unit nbval lab lint bench dryrun clean

help:
	@echo "make reproduce [PROFILE=demo|smoke|paper]  set up, generate data, run every notebook, regenerate figures/"
	@echo "make readme                                README's results table from results/metrics.json (demo)"
	@echo "make test                                  set up, unit tests, nbval on every notebook (smoke profile)"
	@echo "make lab                                   JupyterLab with this environment's kernel"
	@echo "make bench                                 benchmark scripts (see benchmarks/)"
	@echo "make dryrun                                the paper network's size, memory and CPU step time"

# A local virtual environment with the pinned versions; rebuilt when the pins change.
$(STAMP): requirements.txt requirements-lock.txt .jupyter/ipython_kernel_config.py
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] >= (3, 11), "Python >= 3.11 needed, found " + sys.version' 
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt -c requirements-lock.txt
	$(PY) -c 'import site, pathlib; pathlib.Path(site.getsitepackages()[0], "rpnet_repo.pth").write_text(str(pathlib.Path.cwd()) + "\n")'
	mkdir -p $(VENV)/etc/ipython && cp .jupyter/ipython_kernel_config.py $(VENV)/etc/ipython/
	touch $(STAMP)

setup: $(STAMP)

# Test-only dependencies (the JAX CPU backend for the second-backend tests).
TEST_STAMP := $(VENV)/.test-installed
$(TEST_STAMP): $(STAMP) requirements-test.txt
	$(PY) -m pip install --quiet -r requirements-test.txt -c requirements-lock.txt
	touch $(TEST_STAMP)

data: $(STAMP)
	RPNET_PROFILE=$(PROFILE) $(PY) -m utils.cohort --profile $(PROFILE) \
		$(if $(filter demo,$(PROFILE)),--manifest data_manifest.csv,)

# Stored notebooks without timestamps or volatile metadata (.jupyter/nbconvert_clean.py).
reproduce: $(STAMP) data
	@for nb in $(NOTEBOOKS); do \
		echo "== $$nb ($(PROFILE))"; \
		RPNET_PROFILE=$(PROFILE) $(VENV)/bin/jupyter nbconvert --to notebook --execute --inplace \
			--config .jupyter/nbconvert_clean.py --ExecutePreprocessor.timeout=-1 \
			--ExecutePreprocessor.kernel_name=python3 "$$nb" || exit 1; \
	done
	RPNET_PROFILE=$(PROFILE) $(PY) -m utils.evaluation.report --profile $(PROFILE)
	@echo "figures in $$(RPNET_PROFILE=$(PROFILE) $(PY) -c 'from utils.config import get_paths; print(get_paths().figures_dir)')"

# README's results table from the profile's metrics.json (utils/evaluation/report.py). Only the demo
# profile's phantom run is written into README.md; other profiles print the table, exit 0.
readme: $(STAMP)
	RPNET_PROFILE=$(PROFILE) $(PY) -m utils.evaluation.report --profile $(PROFILE)

test: $(TEST_STAMP) lint unit nbval

unit: $(TEST_STAMP)
	RPNET_PROFILE=smoke $(PY) -m pytest tests -q

nbval: $(STAMP)
	RPNET_PROFILE=smoke $(PY) -m pytest $(NBVAL_FLAGS) $(NOTEBOOKS)

lab: $(STAMP)
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3"
	RPNET_STATIC_FIGURES= RPNET_PROFILE=$(PROFILE) $(VENV)/bin/jupyter lab notebooks/ \
		--config=.jupyter/jupyter_server_config.py \
		$(if $(filter 0,$(shell id -u)),--allow-root,)

lint: $(STAMP)
	$(PY) -m ruff check utils tests benchmarks

bench: $(STAMP)
	$(PY) benchmarks/bench_matmul.py
	$(PY) benchmarks/bench_cohort.py --profile $(PROFILE)
	$(PY) benchmarks/bench_preprocess.py --profile $(PROFILE)
	$(PY) benchmarks/bench_model.py --profile $(PROFILE)
	$(PY) benchmarks/bench_loader.py --profile $(PROFILE)
	$(PY) benchmarks/bench_training_budget.py --profile $(PROFILE)
	$(PY) benchmarks/exp_training_schedule.py --profile $(PROFILE)

# The paper profile's network at its real size and batch: one CPU training step, memory estimate.
dryrun: $(STAMP)
	$(PY) benchmarks/dryrun_profile.py --profile $(if $(filter demo,$(PROFILE)),paper,$(PROFILE))

clean:
	rm -rf runs data/cache
