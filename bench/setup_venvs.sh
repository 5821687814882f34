#!/usr/bin/env bash
# Create the Python environments the benchmark needs (if missing) and print their python paths as shell exports.
#
#   eval "$(bench/setup_venvs.sh)"      # sets BENCH_PY (build + diffusers) and BENCH_OPT_PY (optimum-onnx)
#
# BENCH_PY     the onnx/ tools' venv ($SDXLRT_ONNX_VENV, default ~/.cache/sdxlrt/venv-onnx; made by onnx/setup_venv.sh):
#              torch 2.15.0, diffusers 0.42.1, transformers 5.24.0, onnxruntime 1.31.1. Runs build_bench.py and
#              contender C (diffusers/PyTorch on CPU).
# BENCH_OPT_PY optimum-onnx's own venv ($SDXLRT_OPT_VENV, default ~/.cache/sdxlrt/venv-opt). optimum-onnx 0.1.0 pins
#              transformers < 4.58, which needs huggingface_hub < 1.0, which diffusers >= 0.36 refuses, so it cannot
#              share the tools' venv. onnxruntime is pinned to the tools' version (1.31.1): the bench points sdxlrt at
#              this venv's libonnxruntime.so, so sdxlrt and optimum run the same ONNX Runtime release from one wheel.
# The PyPI torch wheel pulls ~4 GB of CUDA libraries; everything runs on the CPU. Existing venvs are reused as is.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
py="$("$here/../onnx/setup_venv.sh")"
opt="${SDXLRT_OPT_VENV:-$HOME/.cache/sdxlrt/venv-opt}"
if [ ! -x "$opt/bin/python" ] || ! "$opt/bin/python" -c "import optimum.onnxruntime" 2>/dev/null; then
    echo "creating venv $opt" >&2
    python3 -m venv "$opt" >&2
    "$opt/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip >&2
    "$opt/bin/python" -m pip install --disable-pip-version-check \
        "torch==2.15.0" "diffusers==0.35.2" "transformers==4.57.6" "huggingface_hub==0.36.2" \
        "optimum-onnx[onnxruntime]==0.1.0" "optimum==2.1.0" "onnxruntime==1.31.1" safetensors pillow numpy >&2
fi
echo "export BENCH_PY=$py"
echo "export BENCH_OPT_PY=$opt/bin/python"
