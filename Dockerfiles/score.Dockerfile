# clipdpo score stage: open_clip image-text scoring on GPU (torch's wheels bundle the CUDA runtime), and spaCy
# with en_core_web_lg 3.8.0 for the noun-level judge's object phrases (score.judge.phrase_weight > 0): the model
# is not on PyPI, so it comes from locks/spacy-model.txt (its release wheel, hash checked), as in the evaluate
# image, and the judge finds it by its package name (score.judge.spacy_model: en_core_web_lg).
# Layers from what changes least to most: the base (by digest), the packages of locks/score.txt (every one
# pinned with its hashes, installed with --require-hashes; scripts/lock_images.py writes it), then the clipdpo
# sources, on PYTHONPATH rather than installed: a source-only change rebuilds only the layers after `COPY src`.
# Build from the repository root: docker build -f Dockerfiles/score.Dockerfile -t clipdpo-score:TAG .
FROM python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d AS deps
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY locks/score.txt /tmp/requirements.txt
COPY locks/spacy-model.txt /tmp/requirements-nlp.txt
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --require-hashes --no-deps -r /tmp/requirements.txt \
    && /opt/venv/bin/pip install --no-cache-dir --require-hashes --no-deps -r /tmp/requirements-nlp.txt \
    && /opt/venv/bin/pip check

FROM python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d
RUN groupadd --gid 1000 clipdpo && useradd --uid 1000 --gid 1000 --create-home clipdpo
COPY --from=deps /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 HF_HOME=/home/clipdpo/.cache/huggingface PYTHONPATH=/opt/clipdpo/src
COPY src /opt/clipdpo/src
USER 1000:1000
WORKDIR /home/clipdpo
# Smoke check: the stage and the pipeline step helpers import, and the noun-level judge's parser loads.
RUN python -c "import open_clip, clipdpo.score.__main__, clipdpo.steps, kfp" && python -m clipdpo.score --help > /dev/null \
    && python -c "from clipdpo.score.phrases import load_parser; load_parser('en_core_web_lg')"
CMD ["python", "-m", "clipdpo.score", "--help"]
