# clipdpo filter stage (and ingest): CPU only (PyArrow/NumPy). torch comes from the CPU wheel index to keep it small.
# Build from the repository root: docker build -f Dockerfiles/filter.Dockerfile -t clipdpo-filter:TAG .
FROM python:3.11.14-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu \
        torch==2.14.1 torchvision==0.29.1 \
    && /opt/venv/bin/pip install --no-cache-dir .

FROM python:3.11.14-slim-bookworm
RUN groupadd --gid 1000 clipdpo && useradd --uid 1000 --gid 1000 --create-home clipdpo
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1
USER 1000:1000
WORKDIR /home/clipdpo
RUN python -c "import pyarrow, clipdpo.filter.__main__, clipdpo.ingest.__main__, clipdpo.steps, kfp" && python -m clipdpo.filter --help > /dev/null
CMD ["python", "-m", "clipdpo.filter", "--help"]
