# The pipeline's image for Prefect's docker and kubernetes work pools (prefect.yaml): the project, its virtual
# environment and the offline assets, so a flow run needs no network beyond the team's MLflow server and DVC remote.
#   docker build -t rlhf-pipeline:latest .                                   # CPU torch
#   docker build --build-arg TORCH=cuda --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 \
#     -t rlhf-pipeline:gpu .
FROM python:3.11-slim-bookworm

# git: DVC runs inside the project's git repository; make: the Makefile's setup target builds the venv.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends git make \
    && rm -rf /var/lib/apt/lists/*

# Which torch build `make setup` installs (a build has no GPU to detect) and where pip finds it: the CPU one by
# default (constraints.txt pins torch==2.13.0+cpu); TORCH=cuda drops that pin's +cpu tag.
ARG TORCH=cpu
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# DL3064 flags TOKENIZERS_PARALLELISM for the word TOKEN; nothing here is a secret.
# hadolint ignore=DL3064
ENV PIP_EXTRA_INDEX_URL=${TORCH_INDEX_URL} \
    PIP_NO_CACHE_DIR=1 \
    HF_HUB_OFFLINE=1 \
    DO_NOT_TRACK=1 \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    DVC_NO_ANALYTICS=1 \
    MLFLOW_DISABLE_TELEMETRY=true \
    TOKENIZERS_PARALLELISM=false \
    PATH=/opt/rlhf/.venv/bin:$PATH

WORKDIR /opt/rlhf
COPY . .
# The same setup as `make demo` on a laptop: the venv in /opt/rlhf/.venv, the project installed editable.
RUN make setup PYTHON=python3.11 TORCH=${TORCH} \
    && git config --global --add safe.directory /opt/rlhf
