#!/bin/bash
# Issue 4 on a lent GPU, in one go: both presets trained by trainyard on CUDA and by the
# idiomatic PyTorch DataLoader loop on the same GPU, plus `trainyard bench`, with raw outputs
# and a summary table (epoch seconds, ratio, accuracies) in $OUT.
#
# Run from the repository root on the GPU machine, after bench/gpu/prepare.sh put the
# stripped CUDA binary and the MNIST files in .gpu/ (carry [".gpu"]):
#     bash bench/gpu/run.sh
# Every step runs under `timeout`, within an overall budget (BUDGET_S, default 420 s, plus
# about 30 s for the set-up and the summary), and a failed step is recorded and skipped.
#
# Dry run on a CPU machine (proves the paths, the commands and the summary):
#     GPU_DRY_RUN=1 TRAINYARD_BIN=target/release/trainyard PYTHON=venv/bin/python \
#         OUT=/tmp/gpu-dry bash bench/gpu/run.sh
#
# Settings (environment): OUT (default /tmp/trainyard-gpu-out), TRAINYARD_BIN (.gpu/trainyard,
# or .gpu/trainyard.xz, which is unpacked to /tmp),
# DATA_DIR (.gpu/data, holding mnist/*.gz), PYTHON (python3), EPOCHS (3), BUDGET_S (420),
# EXTRAS (1: also PyTorch with the data on the device, no DataLoader, if time is left).
set -u
cd "$(dirname "$0")/../.." || exit 1
ROOT=$(pwd)
HERE=$ROOT/bench/gpu
DRY=${GPU_DRY_RUN:-0}
OUT=${OUT:-/tmp/trainyard-gpu-out}
BIN=${TRAINYARD_BIN:-.gpu/trainyard}
DATA=${DATA_DIR:-.gpu/data}
PY=${PYTHON:-python3}
EPOCHS=${EPOCHS:-3}
BUDGET_S=${BUDGET_S:-420}
EXTRAS=${EXTRAS:-1}
START=$(date +%s)
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
# Checkpoints (keras-cnn: 38 MB an epoch) stay out of $OUT; only metrics are copied there.
SCRATCH=$(mktemp -d /tmp/trainyard-gpu.XXXXXX)

if [ "$DRY" = 1 ]; then
  DEVICE=cpu
  # Small slices: keras-cnn's train_limit is taken before its 30% validation split.
  TY_LIMITS_keras='"dataset": {"train_limit": 500, "test_limit": 300},'
  TY_LIMITS_torch='"dataset": {"train_limit": 2048, "test_limit": 500},'
  PT_LIMITS_keras="--limit 350 --test-limit 300 --threads 2"
  PT_LIMITS_torch="--limit 2048 --test-limit 500 --threads 2"
  BENCH_ARGS="--batches 4 --warmup 1"
else
  DEVICE=cuda
  # Full data sets.
  TY_LIMITS_keras=''
  TY_LIMITS_torch=''
  PT_LIMITS_keras=''
  PT_LIMITS_torch=''
  BENCH_ARGS=''
fi

log() { echo "[$(( $(date +%s) - START ))s] $*" | tee -a "$OUT/run.log"; }
printf 'step\trc\tseconds\tlimit_s\n' > "$OUT/steps.tsv"

# step NAME MAX_SECONDS COMMAND...: output in $OUT/NAME.log, status in steps.tsv; never fatal.
step() {
  local name=$1 max=$2; shift 2
  local left=$(( START + BUDGET_S - $(date +%s) ))
  local limit=$(( max < left ? max : left ))
  if [ "$limit" -lt 10 ]; then
    log "SKIP $name: only ${left}s of the budget left"
    printf '%s\tskipped\t0\t0\n' "$name" >> "$OUT/steps.tsv"
    return 0
  fi
  log "start $name (limit ${limit}s): $*"
  local t0 t1 rc
  t0=$(date +%s.%N)
  timeout -k 5 "$limit" "$@" > "$OUT/$name.log" 2>&1
  rc=$?
  t1=$(date +%s.%N)
  local secs
  secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
  [ "$rc" = 124 ] || [ "$rc" = 137 ] && log "TIMEOUT $name after ${limit}s"
  printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$secs" "$limit" >> "$OUT/steps.tsv"
  log "end $name: rc=$rc in ${secs}s"
  if [ "$rc" != 0 ]; then tail -n 15 "$OUT/$name.log" | sed 's/^/    /' | tee -a "$OUT/run.log"; fi
  return 0
}

# --- the machine -----------------------------------------------------------------------------
log "dry_run=$DRY device=$DEVICE bin=$BIN data=$DATA python=$PY epochs=$EPOCHS budget=${BUDGET_S}s out=$OUT"
{
  date -u
  uname -a
  ldd --version | head -n 1
  nproc
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi
    nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total,clocks.max.sm,power.limit --format=csv
  else
    echo "no nvidia-smi"
  fi
} > "$OUT/machine.txt" 2>&1
head -n 20 "$OUT/machine.txt" | tee -a "$OUT/run.log"

# Background sampling of GPU utilisation (shows whether a loop is launch-bound).
SMI_PID=""
if [ "$DRY" != 1 ] && command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=timestamp,utilization.gpu,utilization.memory,memory.used,power.draw \
    --format=csv -lms 500 > "$OUT/gpu-utilisation.csv" 2>&1 &
  SMI_PID=$!
fi

timeout 60 "$PY" -c 'import sys, torch; print("python", sys.version.split()[0]); print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available(), "cudnn", torch.backends.cudnn.version() if torch.cuda.is_available() else None); print("device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu")' \
  > "$OUT/python-env.txt" 2>&1
cat "$OUT/python-env.txt" | tee -a "$OUT/run.log"

# The CUDA libraries from the Python packages (as bench/gpu/run-on-gpu.sh finds them).
# The binary travels compressed (.gpu/trainyard.xz, see prepare.sh): unpack it outside the tree.
if [ ! -x "$BIN" ] && [ -f "$BIN.xz" ]; then
  if command -v xz >/dev/null; then
    xz -dc "$BIN.xz" > "$SCRATCH/trainyard"
  else
    "$PY" -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
      "$BIN.xz" "$SCRATCH/trainyard"
  fi
  chmod +x "$SCRATCH/trainyard"
  BIN=$SCRATCH/trainyard
  log "unpacked $BIN.xz -> $BIN ($(stat -c %s "$BIN") B)"
fi
LDP=$(PYTHON="$PY" FALLBACK_LIB_DIR="$ROOT/.gpu/lib" timeout 60 "$HERE/run-on-gpu.sh" --print-ld-path)
export LD_LIBRARY_PATH=$LDP
log "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
if [ -x "$BIN" ]; then
  ldd "$BIN" > "$OUT/ldd.txt" 2>&1
  grep -E 'cuda|cublas|curand|nvrtc|not found' "$OUT/ldd.txt" | tee -a "$OUT/run.log"
  grep -q "$ROOT/.gpu/lib/libcurand" "$OUT/ldd.txt" \
    && log "NOTE: libcurand.so.10 is prepare.sh's stub (no Python package has curand; trainyard never draws random numbers on the GPU)"
  "$BIN" --version 2>&1 | tee -a "$OUT/run.log"
else
  log "MISSING binary $BIN (run bench/gpu/prepare.sh and carry .gpu)"
fi
ls -la "$DATA/mnist" 2>&1 | tee -a "$OUT/run.log"

# --- the runs ----------------------------------------------------------------------------------
spec() { # spec PRESET LIMITS > file
  echo "{\"preset\": \"$1\", $2 \"epochs\": $EPOCHS, \"device\": \"$DEVICE\"}"
}
spec torch-cnn "$TY_LIMITS_torch" > "$SCRATCH/torch-cnn.json"
spec keras-cnn "$TY_LIMITS_keras" > "$SCRATCH/keras-cnn.json"
cp "$SCRATCH/torch-cnn.json" "$OUT/trainyard-torch-cnn.spec.json"
cp "$SCRATCH/keras-cnn.json" "$OUT/trainyard-keras-cnn.spec.json"

trainyard_train() { # trainyard_train PRESET MAX_S
  step "trainyard-$1" "$2" "$BIN" train "$SCRATCH/$1.json" --out "$SCRATCH/ty-$1" \
    --device "$DEVICE" --data-dir "$DATA" --no-download
  cp "$SCRATCH/ty-$1/metrics.jsonl" "$OUT/trainyard-$1.metrics.jsonl" 2>/dev/null \
    || log "no metrics.jsonl for trainyard $1"
  rm -rf "$SCRATCH/ty-$1/checkpoints"
}
pytorch_ref() { # pytorch_ref LOADER PRESET MAX_S EXTRA_ARGS
  local name=pytorch-$2
  [ "$1" = device ] && name=pytorch-device-$2
  # shellcheck disable=SC2086
  step "$name" "$3" "$PY" "$HERE/reference_dataloader.py" --model "$2" --loader "$1" \
    --epochs "$EPOCHS" --device "$DEVICE" --data-dir "$DATA/mnist" --json "$OUT/$name.json" $4
}

# The headline comparison first, small preset first; each one on the GPU alone.
trainyard_train torch-cnn 90
pytorch_ref dataloader torch-cnn 90 "$PT_LIMITS_torch"
trainyard_train keras-cnn 150
pytorch_ref dataloader keras-cnn 120 "$PT_LIMITS_keras"
# shellcheck disable=SC2086
step trainyard-bench 60 "$BIN" bench --device "$DEVICE" --json --data-dir "$DATA" --no-download $BENCH_ARGS
if [ "$EXTRAS" = 1 ]; then
  pytorch_ref device torch-cnn 60 "$PT_LIMITS_torch"
  pytorch_ref device keras-cnn 90 "$PT_LIMITS_keras"
fi

[ -n "$SMI_PID" ] && kill "$SMI_PID" 2>/dev/null
timeout 30 "$PY" "$HERE/summarize.py" "$OUT" 2>&1 | tee "$OUT/summary.txt"
rm -rf "$SCRATCH"
log "done in $(( $(date +%s) - START ))s; files in $OUT"
