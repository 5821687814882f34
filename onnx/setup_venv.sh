#!/usr/bin/env bash
# Create the Python venv for the tools in onnx/ (if missing) and print its python path on stdout.
#
#   PY=$(onnx/setup_venv.sh)
#
# Location: $SDXLRT_ONNX_VENV, default ~/.cache/sdxlrt/venv-onnx. An existing venv is reused as is, except that
# OpenCV (make_canny.py's cv2.Canny), added to requirements.txt later than the rest, is installed into it when missing.
# The PyPI torch wheel pulls ~4 GB of CUDA libraries (the tools run on CPU); to avoid that, point
# PIP_EXTRA_INDEX_URL / PIP_INDEX_URL at a CPU-only torch wheel index before running this script.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${SDXLRT_ONNX_VENV:-$HOME/.cache/sdxlrt/venv-onnx}"
if [ ! -x "$venv/bin/python" ]; then
    echo "creating venv $venv" >&2
    python3 -m venv "$venv" >&2
    "$venv/bin/python" -m pip install --upgrade pip >&2
    "$venv/bin/python" -m pip install -r "$here/requirements.txt" >&2
fi
if ! "$venv/bin/python" -c "import cv2" 2>/dev/null; then
    echo "installing OpenCV into $venv" >&2
    "$venv/bin/python" -m pip install "$(grep '^opencv-python-headless==' "$here/requirements.txt")" >&2
fi
# Pins added after a venv may have been made (compel for make_prompts.py): installed into an existing venv too,
# without touching the packages it already has.
if ! "$venv/bin/python" -c "import compel" 2>/dev/null; then
    "$venv/bin/python" -m pip install --no-deps $(grep -E '^(compel|pyparsing)==' "$here/requirements.txt") >&2
fi
echo "$venv/bin/python"
