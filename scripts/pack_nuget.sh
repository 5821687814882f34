#!/usr/bin/env bash
# Builds target/nuget/SdxlRt.<version>.nupkg (version from Cargo.toml): lib/netstandard2.0/SdxlRt.dll + xml docs,
# runtimes/linux-x64/native/libsdxlrt.so, README.md, and a dependency on Microsoft.ML.OnnxRuntime (CPU) at the ONNX
# Runtime version scripts/setup.sh tests with. Then validates it: a structural check (zip entries, content types,
# nuspec, managed DLL, ELF machine, exported sdxl_ symbols) and a consumer run: the C# test program on the .NET 8
# runtime from the extracted package, with the deps.json the SDK writes, so the host itself resolves
# runtimes/linux-x64/native/. No NuGet feed is reachable here, so the ONNX Runtime library from .deps/ stands in
# for the Microsoft.ML.OnnxRuntime package's, placed where that package keeps it.
#
#   scripts/pack_nuget.sh          CPU package: SdxlRt, depends on Microsoft.ML.OnnxRuntime
#   scripts/pack_nuget.sh --gpu    SdxlRt.Gpu.Linux, depends on Microsoft.ML.OnnxRuntime.Gpu.Linux instead
#
# Env: SDXLRT_REPOSITORY_URL sets the nuspec's <repository> (else Cargo.toml's `repository`, if any).
# Last line: the consumer run's `N passed, M failed`.
set -euo pipefail
cd "$(dirname "$0")/.."
source bindings/csharp/tools/common.sh

PKG_ID=SdxlRt
ORT_PACKAGE=Microsoft.ML.OnnxRuntime
if [ "${1:-}" = "--gpu" ]; then
    PKG_ID=SdxlRt.Gpu.Linux
    ORT_PACKAGE=Microsoft.ML.OnnxRuntime.Gpu.Linux
fi
VERSION="$(cs_version)"
ORT_VERSION="$(sed -n 's/^ORT_VERSION=//p' scripts/setup.sh)"
REPO_URL="${SDXLRT_REPOSITORY_URL:-$(sed -n 's/^repository *= *"\(.*\)"/\1/p' Cargo.toml)}"

cs_ensure_mono
cs_ensure_dotnet
if [ "${SDXLRT_PACK_SKIP_BUILD:-}" = 1 ] && [ -f "$CS_OUT/lib/SdxlRt.dll" ] && [ -f target/release/libsdxlrt.so ]; then
    eval "$(scripts/setup.sh)"
    ORT_LIB="$ORT_DYLIB_PATH"
    unset ORT_DYLIB_PATH
else
    cs_build_native
    cs_build_managed
fi

OUT=target/nuget
rm -rf "$OUT"
mkdir -p "$OUT"
# Ship the library without debug info (the release profile keeps line tables for test backtraces).
NATIVE="$OUT/libsdxlrt.so"
cp target/release/libsdxlrt.so "$NATIVE"
if command -v strip >/dev/null 2>&1; then strip --strip-debug "$NATIVE"; fi
REPO_ARGS=()
[ -n "$REPO_URL" ] && REPO_ARGS=(--repository "$REPO_URL")
PKG="$(python3 "$CS_DIR/tools/nupkg.py" pack --id "$PKG_ID" --version "$VERSION" --ort-package "$ORT_PACKAGE" \
    --ort-version "$ORT_VERSION" --readme "$CS_DIR/README.md" --out "$OUT" "${REPO_ARGS[@]}" \
    "$CS_OUT/lib/SdxlRt.dll=lib/netstandard2.0/SdxlRt.dll" \
    "$CS_OUT/lib/SdxlRt.xml=lib/netstandard2.0/SdxlRt.xml" \
    "$NATIVE=runtimes/linux-x64/native/libsdxlrt.so")"
cs_log "built $PKG"
python3 "$CS_DIR/tools/nupkg.py" check "$PKG" --version "$VERSION" --header include/sdxlrt.h

# Consumer: the test program compiled against the package's DLL, in an app folder holding neither SdxlRt.dll nor
# any native library; the host must find them in the global-packages folder through deps.json.
CONSUMER="$OUT/consumer"
GP="$CONSUMER/packages"
APP="$CONSUMER/app"
PKG_DIR="$(python3 "$CS_DIR/tools/nupkg.py" consumer "$PKG" --ort-lib "$ORT_LIB" --ort-package "$ORT_PACKAGE" \
    --ort-version "$ORT_VERSION" --app-dir "$APP" --gp "$GP")"
cs_build_tests "$PKG_DIR/lib/netstandard2.0/SdxlRt.dll" "$APP"
DATA="$CS_OUT/test-data"
for case in cfg_neg controlnet controlnet_guess img2img inpaint inpaint_crop inpaint_crop_blur micro_conditioning hires_latent hires_controlnet_second guidance_rescale clip_skip; do
    python3 "$CS_DIR/tools/golden_to_raw.py" "tests/fixtures/goldens/$case.safetensors" "$DATA"
done
cs_log "consumer run on .NET 8 from the extracted package"
env -u LD_LIBRARY_PATH -u ORT_DYLIB_PATH RUST_BACKTRACE=0 \
    SDXLRT_FIXTURES="$PWD/tests/fixtures" SDXLRT_TEST_DATA="$DATA" \
    SDXLRT_EXPECT_LIB_DIR="$PKG_DIR/runtimes/linux-x64/native" \
    SDXLRT_EXPECT_ORT_DIR="$GP/$(echo "$ORT_PACKAGE" | tr 'A-Z' 'a-z')/$ORT_VERSION/runtimes/linux-x64/native" \
    timeout 600 "$DOTNET" exec --depsfile "$APP/SdxlRt.Tests.deps.json" \
    --runtimeconfig "$APP/SdxlRt.Tests.runtimeconfig.json" --additionalprobingpath "$PWD/$GP" "$APP/SdxlRt.Tests.exe"
