#!/usr/bin/env bash
# The whole test suite: formatting, lints, and every test.
# Usage: tests/run.sh   (from anywhere; installs nothing but what is missing)
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo is missing: install Rust (https://rustup.rs) first" >&2
  exit 1
fi

# The tests read MNIST from $TRAINYARD_DATA_DIR; unset, from ../shared/data beside the
# repository where it exists, else from a cache that `trainyard fetch-data` fills once
# from the usual mirrors, verifying every file's checksum. Tests never download.
if [ -z "${TRAINYARD_DATA_DIR:-}" ]; then
  if [ -d ../shared/data/mnist ]; then
    TRAINYARD_DATA_DIR=$(cd ../shared/data && pwd)
  else
    TRAINYARD_DATA_DIR=${XDG_CACHE_HOME:-$HOME/.cache}/trainyard/data
  fi
fi
export TRAINYARD_DATA_DIR
cargo run -q -- fetch-data mnist --data-dir "$TRAINYARD_DATA_DIR" --no-download 2>/dev/null ||
  cargo run -q -- fetch-data mnist --data-dir "$TRAINYARD_DATA_DIR"

# The service tests need PostgreSQL on 127.0.0.1:5432; start it (or install it) when it
# is not running. Each #[sqlx::test] creates and drops its own database.
export DATABASE_URL="${DATABASE_URL:-postgres://postgres:postgres@127.0.0.1:5432/postgres}"
ensure_postgres() {
  command -v pg_isready >/dev/null 2>&1 && pg_isready -h 127.0.0.1 -p 5432 -q && return 0
  if ! command -v pg_ctlcluster >/dev/null 2>&1; then
    echo "installing PostgreSQL" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  fi
  local version
  version=$(ls /etc/postgresql | sort -V | tail -n 1)
  pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  for _ in $(seq 1 30); do
    pg_isready -h 127.0.0.1 -p 5432 -q && break
    sleep 1
  done
  pg_isready -h 127.0.0.1 -p 5432 -q || { echo "PostgreSQL did not start" >&2; exit 1; }
  # A fresh cluster asks for a password over TCP: give postgres the one in DATABASE_URL.
  su postgres -c "psql -q -c \"ALTER USER postgres PASSWORD 'postgres'\"" >/dev/null 2>&1 || true
}
ensure_postgres

# The web app's tests (tests/it/browser.rs) drive Debian's Chromium through chromedriver.
ensure_browser() {
  command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 && return 0
  echo "installing chromium and chromium-driver" >&2
  apt-get update -qq &&
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
}
ensure_browser

# tests/it/metrics.rs lints the /metrics scrape with Debian's promtool (package prometheus).
ensure_promtool() {
  command -v promtool >/dev/null 2>&1 && return 0
  echo "installing prometheus (for promtool)" >&2
  apt-get update -qq &&
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null
}
ensure_promtool

# Candle in an unoptimised build is an order of magnitude slower; Cargo.toml gives
# dependencies opt-level 3 in the dev and test profiles.
cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
cargo test --all-targets
# The web app's pure modules (its MNIST preparation) under Node's own test runner.
command -v node >/dev/null 2>&1 || {
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs >/dev/null
}
node --test tests/web/
# The CPU path again on the kernels a CPU without AVX-512 gets (the gemm crate's, row
# copies, scalar pooling), against Candle's graph: this machine would otherwise only ever
# test the AVX-512 ones.
TRAINYARD_NO_AVX512=1 cargo test --test it cpu_path::
# Generated requests from the OpenAPI document against a real `trainyard serve`
# (schemathesis from PyPI, in a cached venv): no 5xx, nothing the document does not say.
bash tests/schemathesis.sh

# Real data nobody here made: scikit-learn's bundled digits (from PyPI, in a cached venv),
# exported as class folders, uploaded over HTTP and learnt.
SKLEARN_VENV="${TRAINYARD_SKLEARN_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/trainyard/sklearn-1.5.2}"
if [ ! -x "$SKLEARN_VENV/bin/python" ] || ! "$SKLEARN_VENV/bin/python" -c 'import sklearn' 2>/dev/null; then
  echo "installing scikit-learn 1.5.2 into $SKLEARN_VENV" >&2
  rm -rf "$SKLEARN_VENV"
  python3 -m venv "$SKLEARN_VENV"
  "$SKLEARN_VENV/bin/pip" install -q --disable-pip-version-check scikit-learn==1.5.2
fi
DIGITS_ZIP=$(mktemp --suffix=.zip)
"$SKLEARN_VENV/bin/python" tests/fixtures/digits/export.py "$DIGITS_ZIP"
TRAINYARD_DIGITS_ZIP="$DIGITS_ZIP" cargo test --test it digits:: -- --ignored
rm -f "$DIGITS_ZIP"

# A client nobody here wrote: NVIDIA's tritonclient[http] (from PyPI, in a cached venv,
# with Pillow for the spec's resize) against the Open Inference Protocol routes, its
# answers compared with /predict's.
TRITON_VENV="${TRAINYARD_TRITON_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/trainyard/tritonclient-2.73.0}"
if [ ! -x "$TRITON_VENV/bin/python" ] ||
  ! "$TRITON_VENV/bin/python" -c 'import tritonclient.http, PIL' 2>/dev/null; then
  echo "installing tritonclient 2.73.0 into $TRITON_VENV" >&2
  rm -rf "$TRITON_VENV"
  python3 -m venv "$TRITON_VENV"
  "$TRITON_VENV/bin/pip" install -q --disable-pip-version-check "tritonclient[http]==2.73.0" pillow==13.0.0
fi
TRAINYARD_TRITON_PYTHON="$TRITON_VENV/bin/python" cargo test --test it v2::tritonclient -- --ignored

# Fashion-MNIST uploaded as IDX pairs (Debian's dataset-fashion-mnist) trains the curve of
# the built-in one, bit for bit.
[ -d /usr/share/datasets/fashion-mnist ] || {
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null
}
cargo test --test it fashion_upload:: -- --ignored

# Stops and starts PostgreSQL, breaking every other connection on the machine: run alone,
# after everything else (the test is #[ignore]d so that a plain `cargo test` skips it).
cargo test --test it pg_restart:: -- --ignored

# `docker compose up`, proven: builds the images and runs the stack as a user does (it
# installs and starts a Docker engine when missing). Last, as the slowest step.
bash tests/compose.sh
