# The production image: NGC PyTorch (CUDA, torch, NCCL, Transformer Engine, apex) +
# megatron-core + this project for the trainer, and sglang and vLLM each in its own virtual
# environment: sglang pins torch==2.11.0 and vLLM torch==2.14.0 from PyPI, which must not replace
# the base image's torch build (nor each other's; vLLM 0.34.0 also needs transformers >= 5.16.1,
# above the trainer's). vLLM's wheels are CUDA 13 builds: the host driver must support CUDA 13.
# NeMo-Run is not in the image: it only submits, from the login node (pip install ".[launch]").
# Versions checked 2026-11-28 (README "Container"); the build stops if the base image's
# Transformer Engine is outside what megatron-core 0.16.1 supports, or if an install breaks a
# requirement (pip check). Layers go from the least to the most often changed: sglang's and
# vLLM's environments (several GB each) are built before the trainer's requirements or code are
# copied.
#   docker build -t megatron-fork:0.1.0 .
#   docker run --rm --gpus all megatron-fork:0.1.0    # smoke check (tools/container_smoke.py)
ARG NGC_PYTORCH=nvcr.io/nvidia/pytorch:26.01-py3
FROM ${NGC_PYTORCH}

ARG SGLANG_VERSION=0.5.15.post1
# megatron_fork/rollout/vllm_launch.py VLLM_VERSION (tests/test_container.py holds them equal).
ARG VLLM_VERSION=0.34.0
ARG VIRTUALENV_VERSION=21.15.11
ARG TE_MIN_VERSION=2.9
ARG TE_BELOW_VERSION=2.12

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# SGLANG_NCCL_LIBRARY: the engines preload the trainer's NCCL (recipes/engine_task.py), so both
# ends of the trainer -> engines NCCL group run one NCCL version. It is a link, made below, to
# the file the base image's torch loads (found, not written here: x86_64 and arm64 alike).
# VLLM_NCCL_SO_PATH names the same link: vLLM's PyNccl, which its weight-transfer communicator
# uses, loads it (megatron_fork/rollout/vllm_launch.py).
ENV PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SGLANG_PYTHON=/opt/sglang/bin/python \
    SGLANG_NCCL_LIBRARY=/usr/local/lib/megatron-fork/libnccl.so.2 \
    VLLM_PYTHON=/opt/vllm/bin/python \
    VLLM_NCCL_SO_PATH=/usr/local/lib/megatron-fork/libnccl.so.2

# megatron-core 0.16.1 is verified with Transformer Engine >= 2.9, < 2.12 (read from the
# package metadata: importing TE needs a GPU).
RUN python -c "import sys; from importlib.metadata import version; \
from packaging.version import Version as V; te = version('transformer_engine'); \
ok = V('${TE_MIN_VERSION}') <= V(V(te).base_version) < V('${TE_BELOW_VERSION}'); \
sys.exit(0 if ok else f'Transformer Engine {te} is outside [${TE_MIN_VERSION}, ${TE_BELOW_VERSION})')"

# sglang with its own torch; every package at the version requirements/sglang.txt names
# (tools/sglang_constraints.py), binary wheels only: a package without a wheel fails the build
# instead of compiling with the image's toolchain. virtualenv (it brings its own pip: no
# ensurepip needed) runs from a scratch directory, so the base image's packages stay as shipped.
COPY requirements/sglang.txt /tmp/sglang-constraints.txt
RUN PIP_CONSTRAINT='' pip install --no-cache-dir --only-binary=:all: --target /tmp/virtualenv \
        "virtualenv==${VIRTUALENV_VERSION}" \
    && PYTHONPATH="/tmp/virtualenv${PYTHONPATH:+:${PYTHONPATH}}" python -m virtualenv /opt/sglang \
    && PIP_CONSTRAINT='' /opt/sglang/bin/pip install --no-cache-dir --only-binary=:all: \
        -c /tmp/sglang-constraints.txt "sglang==${SGLANG_VERSION}" \
    && /opt/sglang/bin/pip check \
    && rm -r /tmp/sglang-constraints.txt /tmp/virtualenv

# vLLM with its own torch, the same way (binary wheels only, pip check); the one release
# megatron_fork/rollout/vllm_launch.py speaks.
RUN PIP_CONSTRAINT='' pip install --no-cache-dir --only-binary=:all: --target /tmp/virtualenv \
        "virtualenv==${VIRTUALENV_VERSION}" \
    && PYTHONPATH="/tmp/virtualenv${PYTHONPATH:+:${PYTHONPATH}}" python -m virtualenv /opt/vllm \
    && PIP_CONSTRAINT='' /opt/vllm/bin/pip install --no-cache-dir --only-binary=:all: \
        "vllm==${VLLM_VERSION}" \
    && /opt/vllm/bin/pip check \
    && rm -r /tmp/virtualenv

# The NCCL the base image's torch loads, at the path SGLANG_NCCL_LIBRARY names; the base image's
# own broken requirements (if any), which the pip checks below tolerate and list.
COPY tools/nccl_library.py tools/pip_check.py /usr/local/lib/megatron-fork/
RUN nccl="$(python /usr/local/lib/megatron-fork/nccl_library.py)" \
    && ln -s "${nccl}" "${SGLANG_NCCL_LIBRARY}" \
    && test -f "${SGLANG_NCCL_LIBRARY}" && test -f "${VLLM_NCCL_SO_PATH}" \
    && python /usr/local/lib/megatron-fork/pip_check.py \
        --save /usr/local/lib/megatron-fork/base-image-pip-check.txt

# The trainer's packages. NGC's own PIP_CONSTRAINT pins every preinstalled package; it is
# replaced by one that keeps only the base image's GPU stack (torch, TE, apex, flash-attn,
# triton, NVIDIA libraries) as it is. Binary wheels only, as for sglang.
COPY requirements/container.txt /tmp/requirements.txt
RUN pip list --format=freeze \
      | grep -iE '^(torch|transformer[-_]engine[-_a-z0-9]*|apex|flash[-_]attn|triton|nvidia-[-_a-z0-9]+)==' \
      > /tmp/keep.txt \
    && PIP_CONSTRAINT='' pip install --no-cache-dir --only-binary=:all: -c /tmp/keep.txt \
        -r /tmp/requirements.txt \
    && python /usr/local/lib/megatron-fork/pip_check.py \
        --against /usr/local/lib/megatron-fork/base-image-pip-check.txt \
    && rm /tmp/requirements.txt /tmp/keep.txt

WORKDIR /opt/megatron-fork
COPY pyproject.toml README.md ./
COPY requirements requirements
COPY megatron_fork megatron_fork
COPY recipes recipes
COPY checkpoints_convert checkpoints_convert
COPY tools tools
# The project itself (its dependencies are installed above, pinned; pip check holds them to its
# declared ranges), run by a non-root user (uid 1000; Ubuntu 24.04 based images already have
# "ubuntu" there).
RUN PIP_CONSTRAINT='' pip install --no-cache-dir --no-deps . \
    && python /usr/local/lib/megatron-fork/pip_check.py \
        --against /usr/local/lib/megatron-fork/base-image-pip-check.txt \
    && (userdel --remove ubuntu 2>/dev/null || true) \
    && useradd --create-home --uid 1000 trainer
USER 1000:1000
WORKDIR /home/trainer
CMD ["python", "/opt/megatron-fork/tools/container_smoke.py"]
