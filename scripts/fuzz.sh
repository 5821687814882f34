#!/usr/bin/env bash
# Builds the cargo-fuzz targets in fuzz/ (AddressSanitizer, libFuzzer) and runs each for a bounded time.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]     SECONDS per target (default 30); default: every target
#
# Installs cargo-fuzz if missing, sets up ONNX Runtime (scripts/setup.sh; abi_generate and engine_options call the
# C ABI), builds every target once, then runs each binary with -max_total_time=SECONDS. New corpus entries go to
# fuzz/corpus-work/<target>/ (the committed seeds in fuzz/corpus/<target>/ are read, never written). Exits non-zero
# if any target crashed, leaked, timed out or ran out of memory; the input is written to fuzz/artifacts/<target>/
# and the line to reproduce it is printed. Logs: fuzz/target/logs/<target>.log. See docs/fuzzing.md.
set -euo pipefail
cd "$(dirname "$0")/.."

SECS="${1:-30}"
shift || true
ALL_TARGETS=(request_json engine_options management lora_safetensors abi_generate)
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=("${ALL_TARGETS[@]}")
case "$SECS" in '' | *[!0-9]*) echo "fuzz: SECONDS must be a whole number, got '$SECS'" >&2; exit 2 ;; esac
for t in "${TARGETS[@]}"; do
    case " ${ALL_TARGETS[*]} " in *" $t "*) ;; *) echo "fuzz: unknown target '$t' (have: ${ALL_TARGETS[*]})" >&2; exit 2 ;; esac
done

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi
# cargo-fuzz passes -Zsanitizer=address; the stable compiler accepts -Z flags only with RUSTC_BOOTSTRAP=1
# (no nightly toolchain needed).
export RUSTC_BOOTSTRAP=1
# build.rs refreshes include/sdxlrt.h outside CI; a fuzz build must not touch the committed header.
export CI="${CI:-1}"
eval "$(scripts/setup.sh)"

start=$(date +%s)
cargo fuzz build -O
echo "fuzz: build took $(( $(date +%s) - start )) s" >&2

BIN=fuzz/target/x86_64-unknown-linux-gnu/release
LOGS=fuzz/target/logs
mkdir -p "$LOGS"
# As cargo fuzz run sets it (ODR reports are false positives across Rust crates).
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_odr_violation=0}"
failed=()
printf '%-18s %10s %8s %8s %8s %s\n' target executions exec/s corpus rss_mb result
for t in "${TARGETS[@]}"; do
    mkdir -p "fuzz/corpus-work/$t" "fuzz/artifacts/$t"
    args=(-max_total_time="$SECS" -print_final_stats=1 -timeout=60 -artifact_prefix="fuzz/artifacts/$t/")
    [ "$t" = lora_safetensors ] || args+=(-dict=fuzz/json.dict)
    result=ok
    "$BIN/$t" "${args[@]}" "fuzz/corpus-work/$t" "fuzz/corpus/$t" >"$LOGS/$t.log" 2>&1 || result=FAILED
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$LOGS/$t.log")
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$LOGS/$t.log")
    rss=$(sed -n 's/^stat::peak_rss_mb: *//p' "$LOGS/$t.log")
    corpus=$(find "fuzz/corpus-work/$t" "fuzz/corpus/$t" -type f | wc -l)
    printf '%-18s %10s %8s %8s %8s %s\n' "$t" "${execs:-?}" "${rate:-?}" "$corpus" "${rss:-?}" "$result"
    if [ "$result" != ok ]; then
        failed+=("$t")
        grep -E 'panicked at|^SUMMARY|ERROR: (libFuzzer|AddressSanitizer|LeakSanitizer)' "$LOGS/$t.log" | head -5 >&2 || true
        grep -A2 'panicked at' "$LOGS/$t.log" | head -6 >&2 || true
        artifact=$(sed -n "s/.*Test unit written to \(.*\)$/\1/p" "$LOGS/$t.log" | tail -1)
        echo "fuzz: $t failed; log $LOGS/$t.log; reproduce: $BIN/$t ${artifact:-<artifact>}" >&2
    fi
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz: FAILED: ${failed[*]}" >&2
    exit 1
fi
echo "fuzz: no crashes in ${TARGETS[*]} (${SECS} s each)"
