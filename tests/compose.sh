#!/usr/bin/env bash
# `docker compose up`, proven: builds the images from this checkout and runs the stack the
# way a user does, on a published port, with the admin key the first start printed.
#
#   1. a Docker engine and Compose (v2 `docker compose` where present, else v1
#      `docker-compose`): installs Debian's docker.io and docker-compose and starts dockerd
#      when they are missing, as tests/run.sh does for PostgreSQL;
#   2. the base images: pulled; where no registry answers, local stand-ins built by
#      docker/standins/make.sh under the same names (said loudly below);
#   3. a new user's first build, offline, before the datasets are in place: it fails
#      within a minute, naming the folder of the checkout to fill; then builds with the
#      datasets in the build context (offline: the build downloads nothing);
#   4. up; a minute later the admin key is still among the last 20 log lines; the image's
#      own `trainyard` as the client (exec, with the key file and with the key; run);
#      submit; follow the curve to its end; predict PNGs; download a checkpoint;
#   5. down, then up: the experiment, its metrics and checkpoint are still there;
#   6. stop during training: the job is handed back, and up finishes it in a second attempt;
#   7. the logs carry no terminal colour codes; the GPU profile's image builds.
# Then it prints what it measured: build times, up to ready, image sizes, memory.
#
# Usage: tests/compose.sh [--measure] [--no-gpu] [--build-only]
#   --measure     also times a clean build (--no-cache) and a rebuild after a source change
#   --no-gpu      skips building the GPU image
#   --build-only  steps 1 to 3 and the GPU image's build, then stops: tests/run.sh runs
#                 this in the background beside the cargo tests, and the whole script
#                 last, when every build is in Docker's cache
# Env: TRAINYARD_COMPOSE_PORT (default 18080), TRAINYARD_DATA_DIR (datasets to build with).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
MEASURE=0 GPU=1 BUILD_ONLY=0
for a in "$@"; do
  case $a in
    --measure) MEASURE=1 ;;
    --no-gpu) GPU=0 ;;
    --build-only) BUILD_ONLY=1 ;;
    *) echo "usage: tests/compose.sh [--measure] [--no-gpu] [--build-only]" >&2; exit 2 ;;
  esac
done
PORT=${TRAINYARD_COMPOSE_PORT:-18080}
PROJECT=trainyard-compose-test
export TRAINYARD_PORT=$PORT TRAINYARD_TAG=compose-test
log() { echo "compose.sh: $*" >&2; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
declare -A FIG

# 1. The engine and Compose.
ensure_docker() {
  local need=0
  command -v dockerd >/dev/null 2>&1 || need=1
  command -v docker-compose >/dev/null 2>&1 || docker compose version >/dev/null 2>&1 || need=1
  if [ $need = 1 ]; then
    log "installing Debian's docker.io and docker-compose"
    apt-get update -qq &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io docker-compose >/dev/null
  fi
  if ! docker info >/dev/null 2>&1; then
    log "starting dockerd"
    (nohup dockerd >/tmp/trainyard-dockerd.log 2>&1 &)
    for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
    docker info >/dev/null 2>&1 || { log "dockerd did not start (/tmp/trainyard-dockerd.log)"; exit 1; }
  fi
  if docker compose version >/dev/null 2>&1; then
    COMPOSE=(docker compose)
  else
    COMPOSE=(docker-compose)
  fi
  log "engine $(docker version -f '{{.Server.Version}}'), compose: ${COMPOSE[*]} ($("${COMPOSE[@]}" version --short 2>/dev/null || echo '?'))"
}
ensure_docker

# 2. Base images: the real ones when a registry answers, stand-ins otherwise.
STANDIN=()
for image in debian:bookworm-slim rust:1.95-bookworm postgres:16; do
  if timeout 300 docker pull -q "$image" >/dev/null 2>&1; then
    continue
  fi
  if ! docker image inspect "$image" >/dev/null 2>&1; then
    log "no registry answers and $image is not here: building local stand-ins"
    bash docker/standins/make.sh "$(mktemp -d)" >&2
  fi
  STANDIN+=("$image")
done
if [ ${#STANDIN[@]} -gt 0 ]; then
  log "NOTE: no container registry answered; these base images are LOCAL STAND-INS, not the"
  log "      official ones: ${STANDIN[*]} (docker/standins/make.sh; postgres:16 is Debian's 15)"
fi

# 3. The build context: this checkout's files (tracked, and new ones git does not ignore),
# with the datasets under docker/data when they are on this machine.
CTX=$(mktemp -d /tmp/trainyard-compose.XXXXXX)
compose() { "${COMPOSE[@]}" -p "$PROJECT" -f "$CTX/docker-compose.yml" "$@"; }
cleanup() {
  local rc=$?
  if [ $rc -ne 0 ] && [ -f "$CTX/docker-compose.yml" ]; then
    log "failed; the last of the logs:"
    compose logs --no-color --tail 40 >&2 2>/dev/null || true
  fi
  [ -f "$CTX/docker-compose.yml" ] && compose --profile gpu down -v --remove-orphans >/dev/null 2>&1 || true
  rm -rf "$CTX"
  exit $rc
}
trap cleanup EXIT
git ls-files -z --cached --others --exclude-standard | tar --null -T - -c | tar -x -C "$CTX"

# 3a. As a new user's first build goes when no dataset is in docker/data yet: offline, it
# must stop before compiling anything, naming the folder in the checkout.
t=$(now)
if out=$(TRAINYARD_DATA_OFFLINE=true timeout 300 "${COMPOSE[@]}" -p "$PROJECT" -f "$CTX/docker-compose.yml" build trainyard 2>&1); then
  log "an offline build without docker/data/mnist succeeded"; exit 1
fi
FIG[no_data_build_fails_s]=$(since "$t")
grep -q "docker/data/mnist/" <<<"$out" || { log "the failed build did not name docker/data/mnist/:"; echo "$out" | tail -30 >&2; exit 1; }
awk -v s="${FIG[no_data_build_fails_s]}" 'BEGIN { exit !(s < 60) }' ||
  { log "the build without data took ${FIG[no_data_build_fails_s]} s to fail (limit 60)"; exit 1; }
log "without docker/data/mnist the offline build failed in ${FIG[no_data_build_fails_s]} s, naming the folder"

DATA=${TRAINYARD_DATA_DIR:-$ROOT/../shared/data}
[ -d /usr/share/datasets/fashion-mnist ] || [ -d "$DATA/fashion-mnist" ] ||
  { command -v apt-get >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1; } || true
# What docker/data/README.md tells a user to provide: MNIST (required) and Fashion-MNIST
# (optional, here from Debian's package). Offline unless MNIST could not be found here.
OFFLINE=true
for set in mnist fashion-mnist; do
  mkdir -p "$CTX/docker/data/$set"
  for src in "$DATA/$set" "/usr/share/datasets/$set"; do
    [ -d "$src" ] && cp "$src"/*-ubyte* "$CTX/docker/data/$set/" 2>/dev/null && break
  done
done
[ "$(ls "$CTX/docker/data/mnist" | wc -l)" -ge 4 ] || OFFLINE=false
export TRAINYARD_DATA_OFFLINE=$OFFLINE
log "datasets in the build context: $(ls "$CTX"/docker/data/*/ | grep -c ubyte) files; offline build: $OFFLINE"
export TRAINYARD_CHECK_MNIST=$CTX/docker/data/mnist

if [ $MEASURE = 1 ]; then
  t=$(now); compose build --no-cache trainyard >&2; FIG[clean_build_s]=$(since "$t")
fi
t=$(now); compose build trainyard >&2; FIG[build_s]=$(since "$t")
if [ $MEASURE = 1 ]; then
  echo "// a source change (tests/compose.sh --measure)" >>"$CTX/src/main.rs"
  t=$(now); compose build trainyard >&2; FIG[rebuild_s]=$(since "$t")
fi
build_gpu() {
  # From the CPU image's dependency build (cached by the build above): only the crates
  # the cuda feature changes compile again (docker/Dockerfile.cuda, DEPS_IMAGE).
  docker build -q --target deps --build-arg DATA_OFFLINE="$TRAINYARD_DATA_OFFLINE" \
    -t "trainyard-deps:$TRAINYARD_TAG" "$CTX" >/dev/null
  export TRAINYARD_DEPS_IMAGE="trainyard-deps:$TRAINYARD_TAG"
  t=$(now); compose --profile gpu build trainyard-gpu >&2; FIG[gpu_build_s]=$(since "$t")
  FIG[gpu_image]=$(docker image inspect -f '{{.Size}}' "trainyard-cuda:$TRAINYARD_TAG" | awk '{printf "%.0f MB", $1 / 1e6}')
}
if [ $BUILD_ONLY = 1 ]; then
  [ $GPU = 1 ] && build_gpu
  echo "compose.sh: images built (build_s ${FIG[build_s]}, gpu_build_s ${FIG[gpu_build_s]:-skipped})"
  exit 0
fi

# 4. Up, and what a user does.
cid() { compose ps -q trainyard; }
# Prints seconds from $1 until /readyz answers 200, then waits for Docker's healthcheck
# (every 2 s) to call the container healthy.
wait_ready() {
  local t=$1 took=
  for _ in $(seq 1 600); do
    curl -fsS -o /dev/null "$BASE/readyz" 2>/dev/null && { took=$(since "$t"); break; }
    sleep 0.1
  done
  [ -n "$took" ] || { log "/readyz did not answer in 60 s"; return 1; }
  for _ in $(seq 1 120); do
    [ "$(docker inspect -f '{{.State.Health.Status}}' "$(cid)" 2>/dev/null)" = healthy ] && {
      echo "$took"; return 0; }
    sleep 0.25
  done
  log "ready, but the healthcheck did not call trainyard healthy in 30 s"; return 1
}
# The container's memory as Docker counts it (cgroup, less page cache), and the resident
# set of the trainyard process itself.
mem() {
  local cg rss
  cg=$(docker stats --no-stream --format '{{.MemUsage}}' "$(cid)" | cut -d/ -f1 | tr -d ' ')
  rss=$(compose exec -T trainyard sh -c 'grep VmRSS /proc/1/status' | awk '{printf "%.1fMiB", $2 / 1024}')
  echo "$cg (cgroup), $rss (RSS)"
}
BASE=http://127.0.0.1:$PORT
t=$(now); compose up -d >&2; FIG[up_to_ready_s]=$(wait_ready "$t")
KEY=$(compose exec -T trainyard cat /var/lib/trainyard/admin-key)
case $KEY in ty_*) ;; *) log "no admin key in /var/lib/trainyard/admin-key"; exit 1 ;; esac
# Logs are read whole before grep: with pipefail, `grep -q` leaving early would fail the
# pipe (SIGPIPE to compose logs) and turn a match into a miss.
logs() { compose logs --no-color "$@" trainyard; }
grep -qF "$KEY" <<<"$(logs)" || { log "the first start did not print its admin key"; exit 1; }
FIG[memory_idle]=$(mem)
# A minute after ready (30 healthchecks), the key is still on a user's screen.
sleep 60
grep -qF "$KEY" <<<"$(logs --tail 20)" ||
  { log "a minute after ready, the admin key is not among the last 20 log lines:"; logs --tail 20 >&2; exit 1; }
# The image's trainyard as the client: as the first admin key (the compose file points it
# at the key file), with a key given, and in a fresh container.
LS=$(compose exec -T trainyard trainyard ls) || { log "exec trainyard ls failed: $LS"; exit 1; }
compose exec -T -e TRAINYARD_API_KEY="$KEY" trainyard trainyard ls >/dev/null
compose exec -T -e TRAINYARD_API_KEY_FILE=/nonexistent trainyard trainyard ls >/dev/null 2>&1 &&
  { log "exec trainyard ls without a key succeeded"; exit 1; }
compose run --rm -T trainyard ls >/dev/null || { log "run --rm trainyard ls failed"; exit 1; }
A=$(python3 tests/compose_check.py "$BASE" "$KEY" use)

# 5. Down and up again: nothing lost.
compose down >&2
t=$(now); compose up -d >&2; FIG[up_again_to_ready_s]=$(wait_ready "$t")
# A later start no longer prints the key, but says where it is (read before the checks
# below add their requests' lines).
grep -qF "docker compose exec trainyard cat /var/lib/trainyard/admin-key" <<<"$(logs --tail 20)" ||
  { log "a later start did not say where the admin key is:"; logs --tail 20 >&2; exit 1; }
grep -qF "$KEY" <<<"$(logs)" && { log "a later start printed the admin key again"; exit 1; }
python3 tests/compose_check.py "$BASE" "$KEY" kept "$A"

# 6. Stop mid-run: handed back, and finished after up.
B=$(python3 tests/compose_check.py "$BASE" "$KEY" long)
FIG[memory_training]=$(mem)
compose stop trainyard >&2
grep -q "handed back\|hand.* back" <<<"$(logs)" ||
  { log "the stopped worker did not say it handed its experiment back"; exit 1; }
compose up -d >&2; wait_ready "$(now)" >/dev/null
python3 tests/compose_check.py "$BASE" "$KEY" resumed "$B"

# 7. Plain logs, and the GPU image.
if grep -q $'\x1b\[' <<<"$(logs)"; then
  log "the logs carry terminal colour codes although they go to no terminal"; exit 1
fi
[ $GPU = 1 ] && build_gpu
FIG[image]=$(docker image inspect -f '{{.Size}}' "trainyard:$TRAINYARD_TAG" | awk '{printf "%.0f MB", $1 / 1e6}')
FIG[postgres_image]=$(docker image inspect -f '{{.Size}}' postgres:16 | awk '{printf "%.0f MB", $1 / 1e6}')

echo "compose.sh: passed (${COMPOSE[*]}, $(nproc) cores; stand-ins: ${STANDIN[*]:-none})"
for k in no_data_build_fails_s clean_build_s build_s rebuild_s gpu_build_s up_to_ready_s up_again_to_ready_s image gpu_image postgres_image memory_idle memory_training; do
  [ -n "${FIG[$k]:-}" ] && printf '  %-20s %s\n' "$k" "${FIG[$k]}"
done
