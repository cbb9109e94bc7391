# clipdpo train stage: DPO with DeepSpeed ZeRO-3 under torchrun (one TrainJob/PyTorchJob node per pod),
# and the pipeline step that launches that job. DS_BUILD_OPS=0: no ops are prebuilt; the trainer uses
# torch's AdamW, so no DeepSpeed op needs compiling at run time either. locks/train.txt holds the [deepspeed]
# and [tracking] extras: MLflow and TensorBoard event files, used when MLFLOW_TRACKING_URI / CLIPDPO_TENSORBOARD
# are set (clipdpo.tracking).
# Layers from what changes least to most: the base (by digest), the packages of locks/train.txt (every one
# pinned with its hashes, installed with --require-hashes; scripts/lock_images.py writes it), then the clipdpo
# sources, on PYTHONPATH rather than installed: a source-only change rebuilds only the layers after `COPY src`.
# Build from the repository root: docker build -f Dockerfiles/train.Dockerfile -t clipdpo-train:TAG .
FROM python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d AS deps
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 DS_BUILD_OPS=0
COPY locks/train.txt /tmp/requirements.txt
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --require-hashes --no-deps -r /tmp/requirements.txt \
    && /opt/venv/bin/pip check

FROM python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d
RUN groupadd --gid 1000 clipdpo && useradd --uid 1000 --gid 1000 --create-home clipdpo
COPY --from=deps /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 HF_HOME=/home/clipdpo/.cache/huggingface \
    PYTHONPATH=/opt/clipdpo/src DS_BUILD_OPS=0
COPY src /opt/clipdpo/src
USER 1000:1000
WORKDIR /home/clipdpo
RUN python -c "import deepspeed, peft, kubernetes, mlflow, torch.utils.tensorboard, clipdpo.train.recipe, clipdpo.cluster.launch, clipdpo.steps" \
    && python -m clipdpo.train --help > /dev/null && torchrun --help > /dev/null
CMD ["python", "-m", "clipdpo.train", "--help"]
