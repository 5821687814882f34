#!/usr/bin/env bash
# Installs what building and testing sdxlrt needs beyond the Rust toolchain: ONNX Runtime 1.31.1 (from the PyPI
# wheel, unpacked into .deps/; nothing is downloaded at build time) and a C compiler for the tokenizer's regex
# library. Prints the exports to use; safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
ORT_VERSION=1.31.1
DEPS="$PWD/.deps"
ORT_LIB="$DEPS/onnxruntime/onnxruntime/capi/libonnxruntime.so.$ORT_VERSION"
if [ ! -f "$ORT_LIB" ]; then
    echo "setup: installing onnxruntime==$ORT_VERSION into .deps/onnxruntime" >&2
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-deps --target "$DEPS/onnxruntime" \
        "onnxruntime==$ORT_VERSION" >&2
fi
if ! command -v cc >/dev/null 2>&1; then
    echo "setup: installing a C compiler (apt-get)" >&2
    (apt-get update -qq && apt-get install -y -qq gcc) >&2
fi
echo "export ORT_DYLIB_PATH=$ORT_LIB"
