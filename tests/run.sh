#!/usr/bin/env bash
# The whole test suite: formatting, lints, and every test.
# Usage: tests/run.sh   (from anywhere; installs nothing but what is missing)
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo is missing: install Rust (https://rustup.rs) first" >&2
  exit 1
fi

# The tests read the MNIST files from ../shared/data/mnist (never the network).
if [ ! -d ../shared/data/mnist ]; then
  echo "../shared/data/mnist is missing: the tests need the MNIST IDX files there" >&2
  exit 1
fi

# Candle in an unoptimised build is an order of magnitude slower; Cargo.toml gives
# dependencies opt-level 3 in the dev and test profiles.
cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
cargo test --all-targets
