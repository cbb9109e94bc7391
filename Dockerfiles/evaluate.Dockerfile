# clipdpo evaluate stage: inference through the generate engines (vLLM on GPU, or transformers), AMBER's
# official NLP resources, and an open_clip text encoder for zero-shot classification via captions; also the
# pipeline's report step (matplotlib figures) and MLflow logging of the evaluation (clipdpo.tracking).
# locks/evaluate.txt resolves clipdpo's pins with its [eval] and [tracking] extras together with vllm==0.33.0,
# taking torch, torchvision, transformers and pillow at vLLM's versions (locks/vllm-overrides.txt).
# The official AMBER resources are baked in at build time (nothing is downloaded when the stage runs):
# nltk's tokenizer, POS tagger and WordNet data, and spaCy's en_core_web_lg 3.8.0 (locks/spacy-model.txt).
# Layers from what changes least to most: the base (by digest), the packages of locks/evaluate.txt (every one
# pinned with its hashes, installed with --require-hashes; scripts/lock_images.py writes it), then the clipdpo
# sources, on PYTHONPATH rather than installed: a source-only change rebuilds only the layers after `COPY src`.
# Build from the repository root: docker build -f Dockerfiles/evaluate.Dockerfile -t clipdpo-evaluate:TAG .
FROM python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d AS deps
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY locks/evaluate.txt /tmp/requirements.txt
COPY locks/spacy-model.txt /tmp/requirements-nlp.txt
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --require-hashes --no-deps -r /tmp/requirements.txt \
    && /opt/venv/bin/pip install --no-cache-dir --require-hashes --no-deps -r /tmp/requirements-nlp.txt \
    && /opt/venv/bin/pip check \
    && /opt/venv/bin/python -m nltk.downloader -d /opt/nltk_data punkt punkt_tab averaged_perceptron_tagger \
        averaged_perceptron_tagger_eng wordnet

FROM python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d
# What vLLM compiles when it loads a model: Triton builds a small C helper with gcc at its first kernel launch
# (gcc and the libc headers of the base's own libc6, Python's headers come with the base), and FlashInfer's
# top-p/top-k sampler JIT-compiles CUDA with nvcc, which this image does not have: VLLM_USE_FLASHINFER_SAMPLER=0
# keeps vLLM on its PyTorch sampler. The CUDA 13 wheels (torch 2.14.0) need an NVIDIA driver >= 580 on the nodes.
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc=4:12.2.0-3 libc6-dev="$(dpkg-query -W -f='${Version}' libc6)" \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 1000 clipdpo && useradd --uid 1000 --gid 1000 --create-home clipdpo
COPY --from=deps /opt/venv /opt/venv
COPY --from=deps /opt/nltk_data /opt/nltk_data
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 HF_HOME=/home/clipdpo/.cache/huggingface NLTK_DATA=/opt/nltk_data \
    PYTHONPATH=/opt/clipdpo/src CC=gcc VLLM_USE_FLASHINFER_SAMPLER=0
COPY src /opt/clipdpo/src
USER 1000:1000
WORKDIR /home/clipdpo
# Smoke check: the stage imports, the official NLP resources load offline, and the C compiler Triton calls
# builds a Python extension here.
RUN python -c "import vllm, open_clip, clipdpo.evaluate.evaluation, clipdpo.steps, clipdpo.report.build, mlflow, kfp; from clipdpo.evaluate.nlp import OfficialNLP; print(OfficialNLP().nouns('Two dogs on the grass.'))" \
    && printf '#include <Python.h>\nint main(void){return 0;}\n' > /tmp/cc.c \
    && gcc -I"$(python -c 'import sysconfig; print(sysconfig.get_paths()["include"])')" /tmp/cc.c -o /tmp/cc \
    && /tmp/cc \
    && python -m clipdpo.evaluate --help > /dev/null
CMD ["python", "-m", "clipdpo.evaluate", "--help"]
