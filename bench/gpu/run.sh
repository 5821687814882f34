#!/usr/bin/env bash
# The GPU check, on a machine with an NVIDIA GPU, PyTorch (CUDA) and python3, in phases so that the large ONNX Runtime
# GPU libraries can arrive in several pieces while the model is being built (see bench/gpu/README.md).
#
#   bench/gpu/run.sh start   unpack carried pieces, install carried wheels, unpack the weight-less graphs and start
#                            `make_model.py fill` (random weights into them, on the GPU) in the background
#   bench/gpu/run.sh part    unpack carried pieces, show the model build's progress
#   bench/gpu/run.sh bench   unpack, reassemble ONNX Runtime GPU, wait for the model, run bench.py (and, with
#                            SDXLRT_GPU_LORA=1, bench/lora_fullsize.py --device cuda on the same model)
#
# Carried files come from $SDXLRT_GPU_CARRY (default .gpu/ in the repository): ortgpu.part.NN (pieces of
# ortgpu.tar.xz made by bench/gpu/pack.sh), ortgpu.sha256, libsdxlrt.so, graphs.tar.xz (`make_model.py graphs`),
# *.whl. Work folder: $SDXLRT_GPU_WORK (default /tmp/sdxlrt-gpu, outside the repository). Results (the tables,
# the logs; not the images) go to $OUT (default $SDXLRT_GPU_WORK/out).
set -euo pipefail
cd "$(dirname "$0")/../.."
CARRY=${SDXLRT_GPU_CARRY:-.gpu}
WORK=${SDXLRT_GPU_WORK:-/tmp/sdxlrt-gpu}
OUT=${OUT:-$WORK/out}
PY=${PYTHON:-python3}
mkdir -p "$WORK/parts" "$WORK/site" "$OUT"
export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

take_carried() {
    [ -d "$CARRY" ] || return 0
    for f in "$CARRY"/ortgpu.part.* "$CARRY"/ortgpu.sha256 "$CARRY"/libsdxlrt.so "$CARRY"/graphs.tar.xz; do
        [ -e "$f" ] && cp "$f" "$WORK/parts/" && echo "took $(basename "$f") ($(stat -c %s "$f") bytes)"
    done
    if ls "$CARRY"/*.whl >/dev/null 2>&1; then
        $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WORK/site" \
            "$CARRY"/*.whl
    fi
}

cuda_library_path() {
    # CUDA 13 runtime, cuBLAS, cuFFT, cuRAND, cuDNN 9: from PyTorch's nvidia-* wheels, then the system toolkit.
    local dirs
    dirs=$($PY - <<'EOF'
import glob, os, site
roots = site.getsitepackages() + [site.getusersitepackages()]
found = (glob.glob(os.path.join(r, "nvidia", "**", "lib*.so*"), recursive=True) for r in roots)
libs = sorted({os.path.dirname(p) for paths in found for p in paths})
print(":".join(libs))
EOF
)
    echo "$dirs:/usr/local/cuda/lib64"
}

case "${1:-}" in
start)
    take_carried
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
    $PY -c 'import torch, onnx, onnxruntime as o; print("torch", torch.__version__, torch.cuda.is_available(),
        "onnx", onnx.__version__, "ort(py)", o.__version__)'
    $PY -c 'import diffusers as d, transformers as t; print("diffusers", d.__version__, "transformers", t.__version__)'
    echo "cpus $(nproc), disk: $(df -h /tmp | tail -1)"
    rm -rf "$WORK"/model/READY* "$WORK/graphs" && tar -C "$WORK" -xJf "$WORK/parts/graphs.tar.xz"
    setsid nohup $PY bench/gpu/make_model.py fill "$WORK/graphs" "$WORK/model" ${SDXLRT_GPU_SMALL:+--small} \
        --device "${SDXLRT_GPU_DEVICE:-cuda}" >"$WORK/make_model.log" 2>&1 </dev/null &
    echo $! >"$WORK/make_model.pid"
    echo "make_model.py fill started (log $WORK/make_model.log)"
    ;;
part)
    take_carried
    tr '\r' '\n' <"$WORK/make_model.log" | grep -vE "arn|^\s*$" | tail -4
    ;;
bench)
    take_carried
    ORT_DIR=$WORK/ortgpu
    if [ ! -e "$ORT_DIR/libonnxruntime.so.1.31.1" ]; then
        (cd "$WORK/parts" && cat ortgpu.part.* >ortgpu.tar.xz && sha256sum -c ortgpu.sha256)
        tar -C "$WORK" -xJf "$WORK/parts/ortgpu.tar.xz"
    fi
    export LD_LIBRARY_PATH="$ORT_DIR:$(cuda_library_path)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    deadline=$((SECONDS + ${SDXLRT_GPU_WAIT:-420}))
    until [ -e "$WORK/model/READY" ] || [ $SECONDS -ge $deadline ]; do sleep 5; done
    [ -e "$WORK/model/READY" ] || { echo "model not ready"; tail -n 5 "$WORK"/make_model.log; exit 1; }
    while kill -0 "$(cat "$WORK/make_model.pid")" 2>/dev/null; do sleep 1; done # its GPU memory is given back
    ldd "$ORT_DIR/libonnxruntime_providers_cuda.so" | grep "not found" || echo "CUDA provider: all libraries found"
    $PY bench/gpu/bench.py "$WORK/model" --lib "$WORK/parts/libsdxlrt.so" --ort "$ORT_DIR/libonnxruntime.so.1.31.1" \
        --out "$WORK/results" --wait $((deadline > SECONDS ? deadline - SECONDS : 0)) ${SDXLRT_GPU_BENCH_ARGS:-} ||
        echo "bench.py failed: $?"
    cp "$WORK"/results/gpu_bench.* "$WORK"/make_model.log "$WORK"/model/make_model.json "$OUT/" 2>/dev/null || true
    if [ "${SDXLRT_GPU_LORA:-0}" = 1 ]; then
        # A LoRA merged into the same full-size model on CUDA vs diffusers' fuse_lora (issue 4; ~2 minutes).
        $PY bench/lora_fullsize.py "$WORK/model" --lib "$WORK/parts/libsdxlrt.so" \
            --ort "$ORT_DIR/libonnxruntime.so.1.31.1" --device cuda ${SDXLRT_GPU_LORA_ARGS:-} ||
            echo "lora_fullsize.py failed: $?"
        cp "$WORK"/model/lora_fullsize.json "$OUT/" 2>/dev/null || true
    fi
    ;;
*)
    sed -n '2,12p' "$0"
    exit 2
    ;;
esac
