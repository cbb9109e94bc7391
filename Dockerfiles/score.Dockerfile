# clipdpo score stage: open_clip image-text scoring on GPU (torch's wheels bundle the CUDA runtime).
# Build from the repository root: docker build -f Dockerfiles/score.Dockerfile -t clipdpo-score:TAG .
FROM python:3.11.14-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN python -m venv /opt/venv && /opt/venv/bin/pip install --no-cache-dir .

FROM python:3.11.14-slim-bookworm
RUN groupadd --gid 1000 clipdpo && useradd --uid 1000 --gid 1000 --create-home clipdpo
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 HF_HOME=/home/clipdpo/.cache/huggingface
USER 1000:1000
WORKDIR /home/clipdpo
# Smoke check: the stage and the pipeline step helpers import.
RUN python -c "import open_clip, clipdpo.score.__main__, clipdpo.steps, kfp" && python -m clipdpo.score --help > /dev/null
CMD ["python", "-m", "clipdpo.score", "--help"]
