#!/usr/bin/env bash
# Sets up and runs every test: the C# bindings on mono and .NET 8 (scripts/csharp_test.sh, which also builds and
# checks the NuGet package), then the Rust unit and integration tests (the integration tests call the C ABI
# directly, on the tiny model bundled in tests/fixtures). The last line is cargo's test summary.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/setup.sh)"
scripts/csharp_test.sh
cargo test --release "$@"
