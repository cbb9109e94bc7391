# clipdpo: every target sets itself up (venv, installs, local S3 server) on a fresh machine.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
RUN_ID ?= demo

.PHONY: help venv test pipeline-run bench clean

help:
	@echo "make pipeline-run   run generate -> score -> filter (locally unless KFP_HOST is set)"
	@echo "make test           unit, integration and end-to-end tests"
	@echo "make bench          filter vs pandas, scoring work per image, DPO training vs TRL"

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	DS_BUILD_OPS=0 $(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q

pipeline-run: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pipelines.run --run-id $(RUN_ID)

bench: $(STAMP)
	$(PY) benchmarks/bench_filter.py
	HF_HUB_OFFLINE=1 $(PY) benchmarks/bench_score.py
	HF_HUB_OFFLINE=1 $(PY) benchmarks/bench_train.py

clean:
	rm -rf .local bench-results
