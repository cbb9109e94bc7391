# clipdpo evaluate stage: inference through the generate engines (vLLM on GPU, or transformers), AMBER's
# official NLP resources, and an open_clip text encoder for zero-shot classification via captions; also the
# pipeline's report step (matplotlib figures) and MLflow logging of the evaluation (clipdpo.tracking).
# vLLM pins its own torch and transformers, so it goes first and clipdpo without dependencies.
# The official AMBER resources are baked in at build time (nothing is downloaded when the stage runs):
# nltk's tokenizer, POS tagger and WordNet data, and spaCy's en_core_web_lg 3.8.0.
# Build from the repository root: docker build -f Dockerfiles/evaluate.Dockerfile -t clipdpo-evaluate:TAG .
FROM python:3.11.14-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir vllm==0.33.0 boto3==1.43.107 pyarrow==25.0.1 pillow==12.3.0 \
        kfp==2.17.0 kfp-kubernetes==2.17.0 open_clip_torch==3.3.0 spacy==3.8.18 nltk==3.9.4 \
        matplotlib==3.11.2 mlflow-skinny==3.17.2 \
        https://github.com/explosion/spacy-models/releases/download/en_core_web_lg-3.8.0/en_core_web_lg-3.8.0-py3-none-any.whl \
    && /opt/venv/bin/pip install --no-cache-dir --no-deps . \
    && /opt/venv/bin/python -m nltk.downloader -d /opt/nltk_data punkt punkt_tab averaged_perceptron_tagger \
        averaged_perceptron_tagger_eng wordnet

FROM python:3.11.14-slim-bookworm
RUN groupadd --gid 1000 clipdpo && useradd --uid 1000 --gid 1000 --create-home clipdpo
COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/nltk_data /opt/nltk_data
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 HF_HOME=/home/clipdpo/.cache/huggingface NLTK_DATA=/opt/nltk_data
USER 1000:1000
WORKDIR /home/clipdpo
# Smoke check: the stage imports and the official NLP resources load offline.
RUN python -c "import vllm, open_clip, clipdpo.evaluate.evaluation, clipdpo.steps, clipdpo.report.build, mlflow, kfp; from clipdpo.evaluate.nlp import OfficialNLP; print(OfficialNLP().nouns('Two dogs on the grass.'))" \
    && python -m clipdpo.evaluate --help > /dev/null
CMD ["python", "-m", "clipdpo.evaluate", "--help"]
