#!/usr/bin/env bash
# Builds and tests the C# binding (bindings/csharp): installs mono and a .NET 8 runtime when missing, builds the
# cdylib, checks NativeMethods.g.cs is what include/sdxlrt.h generates, compiles with mcs, and runs the same test
# program on mono and on .NET 8 against the tiny fixture model. Then builds and validates the NuGet package
# (scripts/pack_nuget.sh), whose consumer run is a third test run. Exits non-zero on any failure; the last line is
# the total, `csharp: N passed, M failed`.
set -euo pipefail
cd "$(dirname "$0")/.."
source bindings/csharp/tools/common.sh

cs_ensure_mono
cs_ensure_dotnet
cs_build_native

cs_log "checking bindings/csharp/SdxlRt/NativeMethods.g.cs against include/sdxlrt.h"
python3 "$CS_DIR/tools/gen_native_methods.py" include/sdxlrt.h "$CS_DIR/SdxlRt/NativeMethods.g.cs" --check >&2

cs_log "compiling with mcs"
cs_build_managed
csproj_version="$(sed -n 's:.*<Version>\(.*\)</Version>.*:\1:p' "$CS_DIR/SdxlRt.csproj")"
if [ "$csproj_version" != "$(cs_version)" ]; then
    cs_log "SdxlRt.csproj <Version> $csproj_version differs from Cargo.toml's $(cs_version)"
    exit 1
fi
# Optional API guard: with mono-devel's .NET Framework 4.6.1 reference assemblies (the oldest netstandard2.0
# implementation), APIs missing there fail to compile. Skipped when mono-devel is not installed.
REF=/usr/lib/mono/4.6.1-api
if [ -f "$REF/mscorlib.dll" ]; then
    cs_log "compiling against the net461 reference assemblies"
    mapfile -t cs_sources < <(find "$CS_DIR/SdxlRt" -name '*.cs' | LC_ALL=C sort)
    mcs "${MCS_FLAGS[@]}" -nostdlib -noconfig -target:library -out:"$CS_OUT/obj/SdxlRt.net461-check.dll" \
        -r:"$REF/mscorlib.dll" -r:"$REF/System.dll" -r:"$REF/System.Core.dll" \
        -r:"$REF/System.Runtime.Serialization.dll" -r:"$REF/System.Xml.dll" "${cs_sources[@]}"
fi
# The README's C# quick start must compile as pasted.
python3 -c 'import sys; t = open(sys.argv[1], encoding="utf-8").read()
open(sys.argv[2], "w", encoding="utf-8").write(t.split("```csharp\n", 1)[1].split("```", 1)[0])' \
    "$CS_DIR/README.md" "$CS_OUT/obj/QuickStart.cs"
mcs "${MCS_FLAGS[@]}" -target:exe -out:"$CS_OUT/obj/QuickStart.exe" -r:"$CS_OUT/lib/SdxlRt.dll" "$CS_OUT/obj/QuickStart.cs"
BIN="$CS_OUT/test-bin"
rm -rf "$BIN"
cs_build_tests "$CS_OUT/lib/SdxlRt.dll" "$BIN"
cp "$CS_OUT/lib/SdxlRt.dll" target/release/libsdxlrt.so "$BIN/"
# ONNX Runtime beside libsdxlrt.so, as the NuGet layout of a published app has it; ORT_DYLIB_PATH stays unset so
# the binding's own lookup is what the tests exercise.
cp "$ORT_LIB" "$BIN/"
DATA="$CS_OUT/test-data"
for case in cfg_neg controlnet controlnet_guess img2img inpaint inpaint_crop inpaint_crop_blur micro_conditioning hires_latent hires_controlnet_second guidance_rescale clip_skip; do
    python3 "$CS_DIR/tools/golden_to_raw.py" "tests/fixtures/goldens/$case.safetensors" "$DATA"
done

export SDXLRT_FIXTURES="$PWD/tests/fixtures" SDXLRT_TEST_DATA="$DATA" RUST_BACKTRACE=0

total_pass=0
total_fail=0
# run_suite NAME COMMAND...: runs a test program, echoes its output, adds its last line's counts to the totals.
run_suite() {
    local name="$1" log="$CS_OUT/$1.log" rc=0
    shift
    cs_log "tests on $name"
    "$@" >"$log" 2>&1 || rc=$?
    cat "$log"
    local summary
    summary="$(tail -n 1 "$log")"
    if [[ "$summary" =~ ^([0-9]+)\ passed,\ ([0-9]+)\ failed$ ]]; then
        total_pass=$((total_pass + BASH_REMATCH[1]))
        total_fail=$((total_fail + BASH_REMATCH[2]))
        [ "$rc" -eq 0 ] || [ "${BASH_REMATCH[2]}" -gt 0 ] || total_fail=$((total_fail + 1))
    else
        cs_log "$name: no summary line (exit status $rc)"
        total_fail=$((total_fail + 1))
    fi
    echo "csharp: $name: $summary" >&2
}

start=$SECONDS
run_suite mono timeout 600 mono --debug "$BIN/SdxlRt.Tests.exe"
run_suite dotnet8 timeout 600 "$DOTNET" exec --runtimeconfig "$BIN/SdxlRt.Tests.runtimeconfig.json" \
    "$BIN/SdxlRt.Tests.exe"

# The package: build, structural check, and the consumer run on .NET 8 from the extracted package.
pack_rc=0
SDXLRT_PACK_SKIP_BUILD=1 scripts/pack_nuget.sh >"$CS_OUT/pack.log" 2>&1 || pack_rc=$?
cat "$CS_OUT/pack.log"
summary="$(tail -n 1 "$CS_OUT/pack.log")"
if [[ "$summary" =~ ^([0-9]+)\ passed,\ ([0-9]+)\ failed$ ]] && [ "$pack_rc" -eq 0 ]; then
    total_pass=$((total_pass + BASH_REMATCH[1]))
    total_fail=$((total_fail + BASH_REMATCH[2]))
else
    cs_log "pack_nuget.sh failed (exit status $pack_rc)"
    total_fail=$((total_fail + 1))
fi
cs_log "test runs took $((SECONDS - start)) s"

echo "csharp: $total_pass passed, $total_fail failed"
[ "$total_fail" -eq 0 ]
