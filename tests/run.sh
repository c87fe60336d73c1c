#!/usr/bin/env bash
# The whole test suite: formatting, lints, every test, the book, and the compose stack.
# Usage: tests/run.sh   (from anywhere; installs nothing but what is missing)
#
# On a new machine most of the time is compiling (the host's tests, the CPU image, the
# CUDA image) and downloading (Debian packages, Python tools, crates), on 2 cores. So
# what downloads starts at once in the background, beside the first compile, and the
# images build in the background beside the cargo tests, whose servers and browsers
# leave a core idle much of the time; tests/compose.sh then runs the stack on images
# already in Docker's cache. Every step's time is printed at the end (tests/steps.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
. tests/steps.sh
trap steps_report EXIT

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo is missing: install Rust (https://rustup.rs) first" >&2
  exit 1
fi
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/trainyard"

# The tests read MNIST from $TRAINYARD_DATA_DIR; unset, from ../shared/data beside the
# repository where it exists, else from a cache that `trainyard fetch-data` fills once
# from the usual mirrors, verifying every file's checksum. Tests never download.
if [ -z "${TRAINYARD_DATA_DIR:-}" ]; then
  if [ -d ../shared/data/mnist ]; then
    TRAINYARD_DATA_DIR=$(cd ../shared/data && pwd)
  else
    TRAINYARD_DATA_DIR=$CACHE/data
  fi
fi
export TRAINYARD_DATA_DIR

# What downloads, side by side with the first compile: every missing Debian package in
# one transaction (PostgreSQL, Chromium for tests/it/browser.rs, promtool for
# tests/it/metrics.rs, Node.js, Docker), the Python tools' venvs (PyPI), and mdBook
# (crates.io).
spawn packages bash tests/packages.sh
venvs() {
  bash tests/venv.sh "${TRAINYARD_SCHEMATHESIS_VENV:-$CACHE/schemathesis-4.32.5}" \
    schemathesis "schemathesis==4.32.5" >/dev/null
  bash tests/venv.sh "${TRAINYARD_SKLEARN_VENV:-$CACHE/sklearn-1.5.2}" \
    sklearn "scikit-learn==1.5.2" >/dev/null
  bash tests/venv.sh "${TRAINYARD_TRITON_VENV:-$CACHE/tritonclient-2.73.0}" \
    "tritonclient.http, PIL" "tritonclient[http]==2.73.0" "pillow==13.0.0" >/dev/null
}
spawn venvs venvs
spawn mdbook bash tests/docs/book.sh --install-only
# The images (tests/compose.sh --build-only) as soon as Docker is installed: the CUDA one
# compiles Candle's kernels for long on one core, and the rest of the suite has the other.
images() {
  after packages
  bash tests/compose.sh --build-only
}
spawn images images

step fmt cargo fmt --all -- --check
# One build of everything, the binary included, and every later step uses it. The tests'
# dev-dependencies change the features of shared dependencies (rand, syn, hyper-util,
# tower...), so a plain `cargo build` or `cargo run` would compile nearly every crate a
# second time with the other features: no step here builds without the test targets.
# Candle in an unoptimised build is an order of magnitude slower; Cargo.toml gives
# dependencies opt-level 3 in the dev and test profiles.
step build cargo test --all-targets --no-run
export TRAINYARD_BIN="${CARGO_TARGET_DIR:-$PWD/target}/debug/trainyard"
data() {
  "$TRAINYARD_BIN" fetch-data mnist --data-dir "$TRAINYARD_DATA_DIR" --no-download 2>/dev/null ||
    "$TRAINYARD_BIN" fetch-data mnist --data-dir "$TRAINYARD_DATA_DIR"
}
step data data
step clippy cargo clippy --all-targets -- -D warnings

# The service tests need PostgreSQL on 127.0.0.1:5432; start it when it is not running.
# Each #[sqlx::test] creates and drops its own database.
export DATABASE_URL="${DATABASE_URL:-postgres://postgres:postgres@127.0.0.1:5432/postgres}"
ensure_postgres() {
  command -v pg_isready >/dev/null 2>&1 && pg_isready -h 127.0.0.1 -p 5432 -q && return 0
  local version
  version=$(ls /etc/postgresql | sort -V | tail -n 1)
  pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  for _ in $(seq 1 30); do
    pg_isready -h 127.0.0.1 -p 5432 -q && break
    sleep 1
  done
  pg_isready -h 127.0.0.1 -p 5432 -q || { echo "PostgreSQL did not start" >&2; return 1; }
  # A fresh cluster asks for a password over TCP: give postgres the one in DATABASE_URL.
  su postgres -c "psql -q -c \"ALTER USER postgres PASSWORD 'postgres'\"" >/dev/null 2>&1 || true
}
join packages
step postgres ensure_postgres

step "cargo test" cargo test --all-targets
# The web app's pure modules (its MNIST preparation) under Node's own test runner.
step "node test" node --test tests/web/
# The CPU path again on the kernels a CPU without AVX-512 gets (the gemm crate's, row
# copies, scalar pooling), against Candle's graph: this machine would otherwise only ever
# test the AVX-512 ones.
step "cpu_path, no AVX-512" env TRAINYARD_NO_AVX512=1 cargo test --test it cpu_path::

# `docker compose up`, proven: the stack runs as a user runs it, on the images built above
# (it installs and starts a Docker engine when missing). In the background from here, on
# its own PostgreSQL in a container: it waits a minute with the stack idle (the admin key
# must still be on screen), and the steps below have the machine meanwhile.
join images
spawn compose bash tests/compose.sh
join venvs
# Generated requests from the OpenAPI document against a real `trainyard serve`
# (schemathesis from PyPI, in a cached venv): no 5xx, nothing the document does not say.
step schemathesis bash tests/schemathesis.sh

# Real data nobody here made: scikit-learn's bundled digits (from PyPI, in a cached venv),
# exported as class folders, uploaded over HTTP and learnt.
digits() {
  local venv zip
  venv=$(bash tests/venv.sh "${TRAINYARD_SKLEARN_VENV:-$CACHE/sklearn-1.5.2}" \
    sklearn "scikit-learn==1.5.2")
  zip=$(mktemp --suffix=.zip)
  "$venv/bin/python" tests/fixtures/digits/export.py "$zip"
  TRAINYARD_DIGITS_ZIP="$zip" cargo test --test it digits:: -- --ignored
  rm -f "$zip"
}
step digits digits

# A client nobody here wrote: NVIDIA's tritonclient[http] (from PyPI, in a cached venv,
# with Pillow for the spec's resize) against the Open Inference Protocol routes, its
# answers compared with /predict's.
tritonclient() {
  local venv
  venv=$(bash tests/venv.sh "${TRAINYARD_TRITON_VENV:-$CACHE/tritonclient-2.73.0}" \
    "tritonclient.http, PIL" "tritonclient[http]==2.73.0" "pillow==13.0.0")
  TRAINYARD_TRITON_PYTHON="$venv/bin/python" cargo test --test it v2::tritonclient -- --ignored
}
step tritonclient tritonclient

# Fashion-MNIST uploaded as IDX pairs (Debian's dataset-fashion-mnist) trains the curve of
# the built-in one, bit for bit.
step "fashion upload" cargo test --test it fashion_upload:: -- --ignored

# The book: mdBook builds it, and every internal link and anchor resolves.
join mdbook
step book bash tests/docs/book.sh

# Stops and starts PostgreSQL, breaking every other connection on the machine: run alone,
# after everything else that uses it (the test is #[ignore]d so that a plain `cargo test`
# skips it). The compose stack has its own PostgreSQL.
step "pg restart" cargo test --test it pg_restart:: -- --ignored

join compose
