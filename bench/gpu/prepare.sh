#!/bin/bash
# Run HERE (the development machine), from anywhere in the repository: builds trainyard with
# CUDA (CUDA 13.0 toolchain from PyPI wheels, see shared/cuda.md), puts the stripped binary
# and the MNIST .gz files in .gpu/ (git-ignored), checks the size of what travels, and prints
# the carry list and the command for the GPU machine.
#
# Settings (environment): CARGO_TARGET_DIR (default /work/target-cuda), MNIST_SRC (default
# ../shared/data/mnist beside the repository, else /work/shared/data/mnist), SKIP_BUILD=1
# (use the binary already built), SHARED (default ../shared, else /work/shared).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
SHARED=${SHARED:-$ROOT/../shared}
[ -d "$SHARED/cuda" ] || SHARED=/work/shared
TARGET=${CARGO_TARGET_DIR:-/work/target-cuda}
MNIST_SRC=${MNIST_SRC:-$SHARED/data/mnist}

if [ "${SKIP_BUILD:-0}" != 1 ]; then
  eval "$("$SHARED/cuda/setup-toolchain.sh")"
  echo "building with CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP into $TARGET (nice 10) ..." >&2
  t0=$(date +%s)
  CARGO_TARGET_DIR=$TARGET nice -n 10 cargo build --release --features cuda
  echo "build: $(( $(date +%s) - t0 ))s" >&2
fi
BIN=$TARGET/release/trainyard
if ! ldd "$BIN" 2>&1 | grep 'libcuda\.so' >/dev/null; then
  echo "$BIN does not link libcuda: not a --features cuda build" >&2
  exit 1
fi

# The stripped binary is about 63 MB (candle's CUDA kernels): too much for the 64 MiB that
# travel, so it goes as .gpu/trainyard.xz (about 8 MB); run.sh unpacks it (xz, or Python's lzma).
rm -rf .gpu
mkdir -p .gpu/data/mnist
WORK=$(mktemp -d)
strip -o "$WORK/trainyard" "$BIN"
nice -n 10 xz -9 -T1 -c "$WORK/trainyard" > .gpu/trainyard.xz
for f in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
  cp "$MNIST_SRC/$f.gz" .gpu/data/mnist/
done
# libcurand.so.10 is linked at load time but never used by trainyard (candle creates a generator
# per device; trainyard draws its random numbers on the host). Recent PyTorch wheels carry no
# curand, and the real library is 41 MB even xz-compressed, so a stub of the four functions the
# binary imports goes along in .gpu/lib; run.sh uses it only when no Python package has curand.
mkdir -p .gpu/lib
cat > "$WORK/curand_stub.c" <<'C'
/* Stub libcurand.so.10 for trainyard (bench/gpu/prepare.sh): success, no random numbers. */
int curandCreateGenerator(void **generator, int rng_type) { (void)rng_type; *generator = (void *)0x1; return 0; }
int curandSetStream(void *generator, void *stream) { (void)generator; (void)stream; return 0; }
int curandSetPseudoRandomGeneratorSeed(void *generator, unsigned long long seed) { (void)generator; (void)seed; return 0; }
int curandDestroyGenerator(void *generator) { (void)generator; return 0; }
C
echo 'libcurand.so.10 { global: curand*; local: *; };' > "$WORK/curand.map"
gcc -shared -fPIC -O2 -Wl,-soname,libcurand.so.10 -Wl,--version-script="$WORK/curand.map" \
  -o .gpu/lib/libcurand.so.10 "$WORK/curand_stub.c"
imports=$(objdump -T "$WORK/trainyard" | awk '/\(libcurand/ {print $NF}' | sort)
stubbed=$(objdump -T .gpu/lib/libcurand.so.10 | awk '/ curand/ {print $NF}' | sort)
if [ "$imports" != "$stubbed" ]; then
  echo "the binary imports curand functions the stub lacks: $imports" >&2
  exit 1
fi

# The binary starts (every library but the driver resolves: libcuda is the build's stub here)
# and accepts the data (checksums of the uncompressed content). Needs no GPU.
ln -s "$HOME/.cache/cuda13/cudaroot/lib/stubs/libcuda.so" "$WORK/libcuda.so.1"
LD_LIBRARY_PATH=$WORK:$HOME/.cache/cuda13/cudaroot/lib \
  "$WORK/trainyard" fetch-data mnist --data-dir .gpu/data --no-download >&2 \
  || { echo "the CUDA binary does not start, or .gpu/data/mnist does not verify" >&2; exit 1; }
xz -dc .gpu/trainyard.xz | cmp - "$WORK/trainyard"

tree_bytes=$(git ls-files -co --exclude-standard -z | du -cb --files0-from=- 2>/dev/null | tail -n 1 | cut -f1)
gpu_bytes=$(du -sb .gpu | cut -f1)
total=$(( tree_bytes + gpu_bytes ))
echo
echo "$(basename "$BIN") (stripped, $(stat -c %s "$WORK/trainyard") B) needs:"
ldd "$WORK/trainyard" | grep -E 'cuda|cublas|curand|nvrtc' | sed 's/^/  /'
rm -rf "$WORK"
ls -la .gpu .gpu/data/mnist
printf 'working tree %d B + .gpu %d B = %d B (%.1f MiB of 64 MiB)\n' \
  "$tree_bytes" "$gpu_bytes" "$total" "$(echo "$total / 1048576" | bc -l)"
if [ "$total" -ge $(( 64 * 1024 * 1024 )) ]; then
  echo "TOO LARGE to carry" >&2
  exit 1
fi
cat <<EOF

On the GPU machine (device tool 'run'):
  carry:     [".gpu"]
  command:   bash bench/gpu/run.sh
  timeout_s: 540
Results land in \$OUT: summary.md / summary.json / summary.txt, run.log, steps.tsv, and the raw
outputs (trainyard-*.log, trainyard-*.metrics.jsonl, pytorch-*.json/.log, trainyard-bench.log,
machine.txt, python-env.txt, ldd.txt, gpu-utilisation.csv).
EOF
