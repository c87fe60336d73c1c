#!/usr/bin/env bash
# Generated requests against a real `trainyard serve`: schemathesis reads the checked-in
# OpenAPI document (openapi/openapi.json), generates valid and invalid requests for every
# operation and fails on any 5xx, any status code the document does not list, and any
# response whose content type, headers or body break the document.
#
# The server runs on a fresh database with no workers (`--workers 0`), so nothing a
# generated request queues can train and take over the machine. It requires keys, as
# `trainyard serve` does by default: an admin key made with `trainyard keys create` before
# it starts goes with every request (schemathesis sends it as the document's `bearer`
# scheme, and checks that operations refuse requests without it). The rate limits are off
# so that generated submissions and predictions reach the handlers, not a 429. Then one
# worker process trains one tiny experiment and exits, so that generated requests reach
# metrics, checkpoints and /predict with real weights too: its id (and a queued one's) are
# offered to the generator as likely values of `id` and `experiment` (the v2 routes' model
# name), and its epoch as a likely `version`.
#
# Usage: tests/schemathesis.sh   (needs python3 with venv and pip, PostgreSQL on
# 127.0.0.1:5432 as tests/run.sh starts it, and MNIST in $TRAINYARD_DATA_DIR or ../shared/data).
# SCHEMATHESIS_MAX_EXAMPLES (default 100) bounds the test cases per operation; the seed is
# fixed (SCHEMATHESIS_SEED, default 1) so a failure reproduces. Extra arguments go to
# `schemathesis run`.
set -euo pipefail
cd "$(dirname "$0")/.."

ST_VERSION=4.32.5
VENV=$(bash tests/venv.sh \
  "${TRAINYARD_SCHEMATHESIS_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/trainyard/schemathesis-$ST_VERSION}" \
  schemathesis "schemathesis==$ST_VERSION")

# TRAINYARD_BIN (tests/run.sh passes the binary its test build made), else the debug
# binary, built as the tests build it: a plain `cargo build` would compile the shared
# dependencies again without the test targets' features.
if [ -z "${TRAINYARD_BIN:-}" ]; then
  cargo test -q --no-run --test it
  TARGET_DIR=$(cargo metadata -q --format-version 1 --no-deps |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
  TRAINYARD_BIN="$TARGET_DIR/debug/trainyard"
fi
BIN="$TRAINYARD_BIN"

ADMIN_URL="${DATABASE_URL:-postgres://postgres:postgres@127.0.0.1:5432/postgres}"
DB="trainyard_schemathesis_$$"
DB_URL="${ADMIN_URL%/*}/$DB"
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
BASE="http://127.0.0.1:$PORT"
WORK=$(mktemp -d)
SERVER_PID=""
WORKER_PID=""

cleanup() {
  local pid
  for pid in "$WORKER_PID" "$SERVER_PID"; do
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid" 2>/dev/null || true
      wait "$pid" 2>/dev/null || true
    fi
  done
  psql -q "$ADMIN_URL" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# METHOD PATH [JSON BODY]: the response body, asked with the key; fails on a status other
# than 2xx.
http() {
  python3 - "$BASE$2" "$1" "${3:-}" <<'PY'
import os, sys, urllib.request
url, method, body = sys.argv[1:]
req = urllib.request.Request(url, method=method, data=body.encode() or None,
                             headers={"content-type": "application/json",
                                      "authorization": "Bearer " + os.environ["TRAINYARD_SCHEMATHESIS_KEY"]})
with urllib.request.urlopen(req, timeout=10) as r:
    sys.stdout.write(r.read().decode())
PY
}

export TRAINYARD_DATA_DIR=${TRAINYARD_DATA_DIR:-../shared/data} TRAINYARD_NO_DOWNLOAD=true TRAINYARD_DEVICE=cpu
export DATABASE_URL="$DB_URL" RUST_LOG="${RUST_LOG:-warn}"
# Making the key creates the database and applies the migrations; serve, finding an admin
# key, makes none of its own. Schemathesis reads the key from the environment.
TRAINYARD_SCHEMATHESIS_KEY=$("$BIN" keys create --account schemathesis --admin 2>"$WORK/keys.log") || {
  cat "$WORK/keys.log" >&2
  exit 1
}
export TRAINYARD_SCHEMATHESIS_KEY
"$BIN" serve --bind "127.0.0.1:$PORT" --workers 0 --rate-limit-experiments 0 \
  --rate-limit-predict 0 >"$WORK/serve.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 1 100); do
  http GET /readyz >/dev/null 2>&1 && break
  kill -0 "$SERVER_PID" 2>/dev/null || { cat "$WORK/serve.log" >&2; exit 1; }
  sleep 0.2
done
http GET /readyz >/dev/null || { echo "the server did not become ready" >&2; cat "$WORK/serve.log" >&2; exit 1; }

# The id of a queued experiment.
submit() {
  http POST /experiments "$1" | python3 -c 'import json, sys; print(json.load(sys.stdin)["id"])'
}
T0=$SECONDS
# Trained: one epoch on a slice, by one worker process on one thread, which then exits.
TRAINED=$(submit '{"preset": "torch-cnn", "epochs": 1, "batch_size": 50,
  "dataset": {"train_limit": 200, "test_limit": 100}, "device": "cpu"}')
RAYON_NUM_THREADS=1 "$BIN" worker --workers 1 --poll-secs 0.5 >"$WORK/worker.log" 2>&1 &
WORKER_PID=$!
status=""
for _ in $(seq 1 300); do
  status=$(http GET "/experiments/$TRAINED" |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["status"])')
  case "$status" in succeeded | failed | cancelled) break ;; esac
  sleep 0.2
done
kill -TERM "$WORKER_PID"
wait "$WORKER_PID" || { echo "the worker did not stop cleanly" >&2; cat "$WORK/worker.log" >&2; exit 1; }
WORKER_PID=""
if [ "$status" != succeeded ]; then
  echo "the seed experiment ended $status" >&2
  cat "$WORK/worker.log" >&2
  exit 1
fi
echo "seed experiment trained in $((SECONDS - T0))s" >&2
# Queued (nothing works on it now), and one cancelled.
QUEUED=$(submit '{"preset": "keras-cnn", "epochs": 1}')
CANCELLED=$(submit '{"preset": "torch-cnn", "epochs": 1}')
http POST "/experiments/$CANCELLED/cancel" >/dev/null
# One that DELETE may take: the others stay for every other operation.
DELETABLE=$(submit '{"preset": "torch-cnn", "epochs": 1}')
http POST "/experiments/$DELETABLE/cancel" >/dev/null

cat >"$WORK/schemathesis.toml" <<EOF
# Generated by tests/schemathesis.sh for one run.
request-timeout = 5.0
# Each run starts from nothing: no state kept in the checkout.
[cache]
enabled = false
[generation]
max-examples = ${SCHEMATHESIS_MAX_EXAMPLES:-100}
database = "none"
[dictionaries.experiments]
values = ["$TRAINED", "$QUEUED", "$CANCELLED"]
[dictionaries.deletable]
values = ["$DELETABLE"]
[dictionaries.checkpoints]
values = ["best", "last", "1", "2"]
[dictionaries.versions]
values = ["1", "2"]
# The document's security scheme, with the admin key made above.
[auth.openapi.bearer]
bearer = "\${TRAINYARD_SCHEMATHESIS_KEY}"
[parameters]
"path.id" = { dictionary = "experiments", probability = 0.5 }
"query.experiment" = { dictionary = "experiments", probability = 0.5 }
"path.which" = { dictionary = "checkpoints", probability = 0.5 }
"path.experiment" = { dictionary = "experiments", probability = 0.5 }
"path.version" = { dictionary = "versions", probability = 0.5 }
# A stream of an experiment that has not ended stays open: read what it sent first.
[[operations]]
include-path = "/experiments/{id}/curve"
request-timeout = 1.0
# A JSON Schema cannot say everything that makes a spec valid (layer shapes, the budget)
# or a body an image, so a schema-valid request may honestly get a 422 or 415 here.
[[operations]]
include-path = "/experiments"
include-method = "POST"
checks.positive_data_acceptance.enabled = false
[[operations]]
include-path = "/predict"
checks.positive_data_acceptance.enabled = false
[[operations]]
include-path = "/specs/validate"
checks.positive_data_acceptance.enabled = false
# Nor can it say that a tensor's shape must be the model's and hold its data.
[[operations]]
include-path = "/v2/models/{experiment}/infer"
checks.positive_data_acceptance.enabled = false
[[operations]]
include-path = "/v2/models/{experiment}/versions/{version}/infer"
checks.positive_data_acceptance.enabled = false
[[operations]]
include-path = "/experiments/{id}"
include-method = "DELETE"
parameters = { "path.id" = { dictionary = "deletable", probability = 0.5 } }
EOF

# 2xx answers on /experiments so far, from the server's own request counter: without the key
# every one would be a 401.
answered_with_key() {
  http GET /metrics | python3 -c '
import re, sys
print(int(sum(float(l.rsplit(" ", 1)[1]) for l in sys.stdin
              if l.startswith("trainyard_http_requests_total{")
              and "route=\"/experiments\"" in l and re.search("status=\"2", l))))'
}
ANSWERED_BEFORE=$(answered_with_key)

SCHEMATHESIS_HOOKS=tests/schemathesis_hooks.py \
  "$VENV/bin/schemathesis" --config-file "$WORK/schemathesis.toml" run openapi/openapi.json \
  --url "$BASE" --seed "${SCHEMATHESIS_SEED:-1}" --workers 2 --no-color "$@" || {
  status=$?
  echo "schemathesis found problems (server log follows)" >&2
  tail -n 50 "$WORK/serve.log" >&2
  exit "$status"
}
# Without the key every generated request would get a 401, which the document lists too.
# How many experiments generated requests queue depends on the workers' timing, so the
# check counts the successful answers on /experiments instead.
ANSWERED_BY_RUN=$(($(answered_with_key) - ANSWERED_BEFORE))
if [ "$ANSWERED_BY_RUN" -le 0 ]; then
  echo "no generated request to /experiments succeeded: was the key sent?" >&2
  exit 1
fi
echo "generated requests got $ANSWERED_BY_RUN successful answers on /experiments" >&2
# A panic that schemathesis saw only as a dropped connection still fails the step.
if ! kill -0 "$SERVER_PID" 2>/dev/null || grep -q "panicked" "$WORK/serve.log"; then
  echo "the server died or panicked during the run:" >&2
  tail -n 50 "$WORK/serve.log" >&2
  exit 1
fi
