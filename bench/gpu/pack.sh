#!/usr/bin/env bash
# Prepare, on a machine with the Rust toolchain and package-registry access, what bench/gpu/run.sh needs on the GPU
# machine, in $SDXLRT_GPU_CARRY (default .gpu/, keep it out of git: `echo /.gpu/ >> .git/info/exclude`):
#   ortgpu.part.NN   libonnxruntime.so.1.31.1 + its CUDA provider from the onnxruntime-gpu 1.31.1 wheel (CUDA 13),
#                    as one xz-compressed tar cut into pieces of $PART_MIB MiB (default 37), to carry one per call
#   ortgpu.sha256    checksum of the whole tar.xz
#   libsdxlrt.so     this checkout's release build, stripped
#   graphs.tar.xz    the full-size SDXL graphs without weights (`bench/gpu/make_model.py graphs`, in onnx/'s venv;
#                    ~10 minutes and ~16 GB of memory the first time, then cached; $SDXLRT_GPU_SMALL=1: the bench model)
#   *.whl            diffusers (and importlib_metadata) for make_model.py / bench.py, peft and accelerate for
#                    bench/lora_fullsize.py (SDXLRT_GPU_LORA=1), if the GPU machine lacks them
set -euo pipefail
cd "$(dirname "$0")/../.."
CARRY=${SDXLRT_GPU_CARRY:-.gpu}
PART_MIB=${PART_MIB:-37}
CACHE=${SDXLRT_GPU_CACHE:-$HOME/.cache/sdxlrt/gpu}
mkdir -p "$CARRY" "$CACHE"

if [ ! -e "$CACHE/ortgpu.tar.xz" ]; then
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 -d "$CACHE" onnxruntime-gpu==1.31.1
    rm -rf "$CACHE/ortgpu" && mkdir -p "$CACHE/ortgpu"
    unzip -o -j -q "$CACHE"/onnxruntime_gpu-1.31.1-*.whl 'onnxruntime/capi/libonnxruntime.so.1.31.1' \
        'onnxruntime/capi/libonnxruntime_providers_cuda.so' 'onnxruntime/capi/libonnxruntime_providers_shared.so' \
        -d "$CACHE/ortgpu"
    (cd "$CACHE" && tar cf - ortgpu | xz -9 -T0 >ortgpu.tar.xz.tmp && mv ortgpu.tar.xz.tmp ortgpu.tar.xz)
fi
rm -f "$CARRY"/ortgpu.part.*
split -b "${PART_MIB}m" -d "$CACHE/ortgpu.tar.xz" "$CARRY/ortgpu.part."
(cd "$CACHE" && sha256sum ortgpu.tar.xz) >"$CARRY/ortgpu.sha256"

GRAPHS=$CACHE/graphs${SDXLRT_GPU_SMALL:+-small}
if [ ! -e "$GRAPHS/graphs.json" ]; then
    "$(onnx/setup_venv.sh)" bench/gpu/make_model.py graphs "$GRAPHS" ${SDXLRT_GPU_SMALL:+--small}
fi
tar -C "$GRAPHS/.." --transform "s|^$(basename "$GRAPHS")|graphs|" -cf - "$(basename "$GRAPHS")" | xz -9 -T0 \
    >"$CARRY/graphs.tar.xz"

cargo build --release --lib
strip -o "$CARRY/libsdxlrt.so" target/release/libsdxlrt.so
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    -d "$CARRY" diffusers==0.42.1 importlib_metadata==10.2.0 peft==0.21.2 accelerate==1.15.0
ls -l "$CARRY"
