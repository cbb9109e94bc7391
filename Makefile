# clipdpo: every target sets itself up (venv, installs); see README.md.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
RUN_ID ?= demo
REGISTRY ?= ghcr.io/clipdpo
TAG ?= $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
IMAGE_STAGES := generate score filter train
PIPELINE_ENV := CLIPDPO_REGISTRY=$(REGISTRY) CLIPDPO_IMAGE_TAG=$(TAG)

.PHONY: help venv tools test pipeline-run compile images push bench clean

help:
	@echo "make pipeline-run   the kfp pipeline: on the cluster in KFP_HOST, else locally (loopback S3, tiny models)"
	@echo "make test           unit, integration and end-to-end tests"
	@echo "make compile        write pipelines/compiled/clipdpo.yaml for REGISTRY/TAG"
	@echo "make images         build the stage images and smoke-check them (needs Docker)"
	@echo "make push           push them to REGISTRY (needs Docker)"
	@echo "make bench          filter vs pandas, scoring work per image, DPO training vs TRL"

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	DS_BUILD_OPS=0 $(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

# kubectl renders the kustomize overlays in the tests; Debian's kubernetes-client provides it.
tools:
	@command -v kubectl >/dev/null 2>&1 || { \
	  echo "kubectl not found: installing Debian's kubernetes-client" >&2; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq kubernetes-client >/dev/null; }

test: $(STAMP) tools
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q

pipeline-run: $(STAMP)
	HF_HUB_OFFLINE=1 $(PIPELINE_ENV) $(PY) -m pipelines.run --run-id $(RUN_ID)

compile: $(STAMP)
	$(PIPELINE_ENV) $(PY) -m pipelines.compile

images:
	@command -v docker >/dev/null 2>&1 || { echo "make images needs a Docker engine; none found" >&2; exit 2; }
	@for stage in $(IMAGE_STAGES); do \
	  image=$(REGISTRY)/clipdpo-$$stage:$(TAG); \
	  echo "== $$image"; \
	  docker build -f Dockerfiles/$$stage.Dockerfile -t $$image . || exit 1; \
	  docker run --rm $$image python -m clipdpo.$$stage --help >/dev/null || { echo "smoke check failed: $$image" >&2; exit 1; }; \
	done

push: images
	@for stage in $(IMAGE_STAGES); do docker push $(REGISTRY)/clipdpo-$$stage:$(TAG) || exit 1; done

bench: $(STAMP)
	$(PY) benchmarks/bench_filter.py
	HF_HUB_OFFLINE=1 $(PY) benchmarks/bench_score.py
	HF_HUB_OFFLINE=1 $(PY) benchmarks/bench_train.py

clean:
	rm -rf .local bench-results pipelines/compiled
