#!/usr/bin/env bash
# One GPU check of the CUDA XnorConv2d kernels (fits in ~8 minutes on one H100; no network,
# no pip): builds the PTX/cubin with nvcc, then runs scripts/gpu_check.py (kernel exactness,
# nin_xnornet end-to-end parity, timings vs cuDNN). Exits non-zero if any check fails.
#
#   scripts/gpu_check.sh [CIFAR_DATA]        # default: $XNORPIPE_DATA, else shared/data/cifar10-jpeg.tar.gz
#   OUT=/some/dir scripts/gpu_check.sh ...   # also writes $OUT/gpu_check.md, .json and .log
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
DATA="${1:-${XNORPIPE_DATA:-shared/data/cifar10-jpeg.tar.gz}}"
BUILD="$ROOT/build/gpu_check/cuda"
export XNORPIPE_CACHE="$ROOT/build/gpu_check/cache"  # decoded-dataset cache stays in the tree
START=$(date +%s)
mkdir -p "$BUILD" "$XNORPIPE_CACHE"
LOG=/dev/null
if [ -n "${OUT:-}" ]; then mkdir -p "$OUT"; LOG="$OUT/gpu_check.log"; fi

{
echo "== gpu_check: $(date -u +%FT%TZ), data=$DATA"
nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total --format=csv,noheader 2>&1 | head -2

# --- build: the same commands as plugins/cuda/CMakeLists.txt, all targets in parallel.
NVCC=$(command -v nvcc || true)
for d in "${CUDA_HOME:-}/bin" /usr/local/cuda/bin; do
  [ -z "$NVCC" ] && [ -x "$d/nvcc" ] && NVCC="$d/nvcc"
done
BUILD_SUMMARY="(not built)"
if [ -z "$NVCC" ]; then
  echo "!! nvcc not found: cannot build the kernels"
else
  PTXAS="$(dirname "$NVCC")/ptxas"
  "$NVCC" --version | tail -1
  t0=$(date +%s)
  fail=0
  pids=()
  for arch in 75 80 86 89 90; do
    ( "$NVCC" -ptx -arch=compute_$arch -O3 -std=c++17 -o "$BUILD/xnor_conv2d.sm_$arch.ptx" plugins/cuda/xnor_conv2d.cu \
      && "$PTXAS" -arch=sm_$arch -O3 -v -o "$BUILD/xnor_conv2d.sm_$arch.cubin" "$BUILD/xnor_conv2d.sm_$arch.ptx" \
         > "$BUILD/ptxas.sm_$arch.log" 2>&1 ) &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p" || fail=1; done
  grep -h "registers\|spill" "$BUILD"/ptxas.sm_90.log 2>/dev/null | sed 's/^/   sm_90 /'
  BUILD_SUMMARY="nvcc $("$NVCC" --version | grep -o 'release [0-9.]*'), sm_75..sm_90 PTX+cubin in $(( $(date +%s) - t0 )) s"
  [ $fail -ne 0 ] && { echo "!! kernel build failed"; BUILD_SUMMARY="BUILD FAILED"; }
  echo "$BUILD_SUMMARY"
  ls -l "$BUILD"
fi
echo "$BUILD_SUMMARY" > "$BUILD/summary.txt"

# --- checks: what is left of ~7.5 minutes, minus a margin for the report.
ELAPSED=$(( $(date +%s) - START ))
BUDGET=$(( 430 - ELAPSED ))
[ $BUDGET -lt 120 ] && BUDGET=120
timeout --signal=INT $(( BUDGET + 30 )) python3 scripts/gpu_check.py --data "$DATA" --cuda-dir "$BUILD" \
  --budget "$BUDGET" --build-log "$BUILD/summary.txt" ${OUT:+--out "$OUT"}
rc=$?
echo "== gpu_check exit $rc after $(( $(date +%s) - START )) s"
exit $rc
} 2>&1 | tee "$LOG"
exit "${PIPESTATUS[0]}"
