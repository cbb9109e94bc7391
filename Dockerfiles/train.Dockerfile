# clipdpo train stage: DPO with DeepSpeed ZeRO-3 under torchrun (one PyTorchJob replica per node),
# and the pipeline step that launches that PyTorchJob. DS_BUILD_OPS=0: no ops are prebuilt; the
# trainer uses torch's AdamW, so no DeepSpeed op needs compiling at run time either. [tracking]: MLflow and
# TensorBoard event files, used when MLFLOW_TRACKING_URI / CLIPDPO_TENSORBOARD are set (clipdpo.tracking).
# Build from the repository root: docker build -f Dockerfiles/train.Dockerfile -t clipdpo-train:TAG .
FROM python:3.11.14-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 DS_BUILD_OPS=0
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN python -m venv /opt/venv && /opt/venv/bin/pip install --no-cache-dir ".[deepspeed,tracking]"

FROM python:3.11.14-slim-bookworm
RUN groupadd --gid 1000 clipdpo && useradd --uid 1000 --gid 1000 --create-home clipdpo
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 HF_HOME=/home/clipdpo/.cache/huggingface
USER 1000:1000
WORKDIR /home/clipdpo
RUN python -c "import deepspeed, peft, kubernetes, mlflow, torch.utils.tensorboard, clipdpo.train.recipe, clipdpo.cluster.launch, clipdpo.steps" \
    && python -m clipdpo.train --help > /dev/null && torchrun --help > /dev/null
CMD ["python", "-m", "clipdpo.train", "--help"]
