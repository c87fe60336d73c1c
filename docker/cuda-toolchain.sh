#!/bin/bash
# Lays out a CUDA 13.0 build toolchain from PyPI wheels in DIR (default ~/.cache/cuda13), with
# no GPU and no CUDA install (docker/Dockerfile.cuda builds with it; so can a developer), then
# prints the environment that `cargo build --features cuda` of candle 0.11 needs. The driver
# library is in no wheel: a stub libcuda.so stands in for it at link time only.
# Usage: eval "$(cuda-toolchain.sh [DIR])"
# Pinned to 13.0.x: cudarc 0.19 accepts 13.0-13.4 only, and PTX from a newer nvcc does not load
# on a driver-580 (CUDA 13.0) machine.
set -euo pipefail
T=${1:-$HOME/.cache/cuda13}
mkdir -p "$T" && cd "$T"
if [ ! -e cudaroot/lib/stubs/libcuda.so ]; then
  python3 -m pip download -q --no-deps -d wheels \
    nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 \
    nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 \
    nvidia-cublas==13.0.2.14 nvidia-curand==10.4.0.35 nvidia-cuda-nvrtc==13.0.88 >&2
  python3 -m pip install -q --no-deps --no-index --target site wheels/*.whl >&2
  W=$T/site/nvidia/cu13
  mkdir -p cudaroot/lib/stubs stubsrc
  ln -sfn "$W/bin" cudaroot/bin; ln -sfn "$W/include" cudaroot/include; ln -sfn "$W/nvvm" cudaroot/nvvm
  for f in "$W"/lib/*.so.*; do ln -sfn "$f" "cudaroot/lib/$(basename "$f")"; done
  for l in cudart.so.13 nvrtc.so.13 curand.so.10 cublas.so.13 cublasLt.so.13; do
    ln -sfn "lib$l" "cudaroot/lib/lib${l%.so.*}.so"
  done
  # The driver library is in no wheel: a link-time stub with every cu* symbol of cuda.h.
  echo '#include <cuda.h>' | gcc -E -P -I "$W/include" -x c - \
    | grep -oE '\bcu[A-Z][A-Za-z0-9_]*[[:space:]]*\(' | sed 's/[[:space:](]//g' | sort -u \
    | awk '{print "void " $1 "(void) {}"}' > stubsrc/libcuda_stub.c
  gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o cudaroot/lib/stubs/libcuda.so stubsrc/libcuda_stub.c
fi
cat <<ENV
export CUDA_ROOT=$T/cudaroot
export PATH=$T/cudaroot/bin:\$PATH
export CUDA_COMPUTE_CAP=\${CUDA_COMPUTE_CAP:-90}
export CUDAFORGE_THREADS=\${CUDAFORGE_THREADS:-2}
ENV
