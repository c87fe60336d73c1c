#!/bin/bash
# On the GPU machine (driver 580, no Rust): finds the CUDA 13 runtime libraries that its Python
# packages carry, puts them on LD_LIBRARY_PATH, and runs the given command.
# A copy of shared/cuda/run-on-gpu.sh (shared/ does not travel to the GPU machine), plus:
#   run-on-gpu.sh --print-ld-path   prints the LD_LIBRARY_PATH it would use, and nothing else;
#   FALLBACK_LIB_DIR: searched last, for a library that no Python package or CUDA install has
#   (prepare.sh puts a libcurand.so.10 stub in .gpu/lib: recent PyTorch wheels carry no curand).
# Usage: run-on-gpu.sh .gpu/trainyard train ...     (PYTHON=python3 by default)
PY=${PYTHON:-python3}
dirs="$(dirname "$0")/lib /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib"
dirs="$dirs $("$PY" -c 'import nvidia, glob, os; [print(d) for p in nvidia.__path__ for d in glob.glob(os.path.join(p, "*", "lib"))]' 2>/dev/null)"
dirs="$dirs ${FALLBACK_LIB_DIR:-}"
lp=""
for lib in libcudart.so.13 libcublas.so.13 libcublasLt.so.13 libcurand.so.10 libnvrtc.so.13; do
  for d in $dirs; do
    if [ -e "$d/$lib" ]; then
      case ":$lp:" in *":$d:"*) ;; *) lp="$lp:$d" ;; esac
      break
    fi
  done
done
export LD_LIBRARY_PATH="${lp#:}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
if [ "${1:-}" = "--print-ld-path" ]; then echo "$LD_LIBRARY_PATH"; exit 0; fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,compute_cap --format=csv,noheader >&2
exec "$@"
