# clipdpo generate stage: vLLM on GPU. vLLM pins its own torch and transformers, so
# this image installs vLLM first and clipdpo without dependencies, then clipdpo's other pins.
# Build from the repository root: docker build -f Dockerfiles/generate.Dockerfile -t clipdpo-generate:TAG .
FROM python:3.11.14-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir vllm==0.33.0 boto3==1.43.107 pyarrow==25.0.1 pillow==12.3.0 \
        kfp==2.17.0 kfp-kubernetes==2.17.0 \
    && /opt/venv/bin/pip install --no-cache-dir --no-deps .

FROM python:3.11.14-slim-bookworm
RUN groupadd --gid 1000 clipdpo && useradd --uid 1000 --gid 1000 --create-home clipdpo
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 HF_HOME=/home/clipdpo/.cache/huggingface
USER 1000:1000
WORKDIR /home/clipdpo
RUN python -c "import vllm, clipdpo.engines, clipdpo.steps, kfp" \
    && python -m clipdpo.generate --help > /dev/null
CMD ["python", "-m", "clipdpo.generate", "--help"]
