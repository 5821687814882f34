#!/usr/bin/env bash
# Sets up and generates out/demo.png from a prompt with the bundled tiny model, through the C ABI (the sdxlrt CLI).
# Extra arguments go to `sdxlrt generate` (e.g. --prompt "..." --seed 7 --steps 20).
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/setup.sh)"
cargo build --release --quiet --bin sdxlrt
mkdir -p out
exec target/release/sdxlrt generate --prompt "a photograph of an astronaut riding a horse" --seed 0 --steps 20 \
    --out out/demo.png --overwrite "$@"
