#!/usr/bin/env bash
# Sets up and runs every test: Rust unit and integration tests (the integration tests call the C ABI directly,
# on the tiny model bundled in tests/fixtures). The last line is cargo's test summary.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/setup.sh)"
cargo test --release "$@"
