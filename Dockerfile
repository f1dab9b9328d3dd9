# The production image: NGC PyTorch (CUDA, torch, Transformer Engine, apex) + megatron-core +
# NeMo-Run + this project for the trainer, and sglang in its own virtual environment: sglang
# pins torch==2.11.0 from PyPI, which must not replace the base image's torch build.
# Versions checked 2026-11-28 (README "Container"); the build stops if the base image's
# Transformer Engine is outside what megatron-core 0.16.1 supports.
#   docker build -t megatron-fork:0.1.0 .
#   docker run --rm --gpus all megatron-fork:0.1.0          # smoke check (versions, recipes)
ARG NGC_PYTORCH=nvcr.io/nvidia/pytorch:26.01-py3
FROM ${NGC_PYTORCH}

ARG SGLANG_VERSION=0.5.15.post1
ARG TE_MIN_VERSION=2.9
ARG TE_BELOW_VERSION=2.12

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SGLANG_PYTHON=/opt/sglang/bin/python

# megatron-core 0.16.1 is verified with Transformer Engine >= 2.9, < 2.12.
RUN python -c "import sys, transformer_engine as te; from packaging.version import Version as V; \
v = V(te.__version__).release[:2]; \
sys.exit(0 if V('${TE_MIN_VERSION}').release <= v < V('${TE_BELOW_VERSION}').release \
else f'Transformer Engine {te.__version__} is outside [${TE_MIN_VERSION}, ${TE_BELOW_VERSION})')"

# The trainer's packages; the constraint keeps the base image's torch as it is.
COPY requirements/container.txt /tmp/requirements.txt
RUN pip list --format=freeze | grep -iE '^(torch|transformer[-_]engine)==' > /tmp/keep.txt \
    && pip install --no-cache-dir -c /tmp/keep.txt -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt /tmp/keep.txt

# sglang with its own torch (NGC's PIP_CONSTRAINT would pin the base image's torch here).
RUN python -m venv /opt/sglang \
    && PIP_CONSTRAINT='' /opt/sglang/bin/pip install --no-cache-dir "sglang==${SGLANG_VERSION}"

WORKDIR /opt/megatron-fork
COPY pyproject.toml README.md ./
COPY requirements requirements
COPY megatron_fork megatron_fork
COPY recipes recipes
COPY checkpoints_convert checkpoints_convert
COPY tools tools
# The project itself (its dependencies are installed above, pinned). A non-root user runs it.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir --no-deps . \
    && useradd --create-home --uid 1000 trainer
USER 1000:1000
WORKDIR /home/trainer
CMD ["python", "/opt/megatron-fork/tools/container_smoke.py"]
