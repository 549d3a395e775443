#!/usr/bin/env bash
# One GPU session of xnorpipe (<= 9 minutes on one H100/H200; no network, no pip, no TensorRT):
# kernel exactness (both conv algorithms), nin_xnornet parity on CUDA, timings against cuDNN with a
# tile sweep of the dot algorithm, a capped training run.
# scripts/gpu_session.py does the work and says what each part measures.
#
#   scripts/gpu_session.sh [--data CIFAR] [--out DIR] [--budget SECONDS] [--dry-run]
#
# --out defaults to $OUT (the device machine's return folder), else build/gpu_session/out; it
# receives gpu_session.json, gpu_session.md, gpu_session.log and the trained checkpoint.
# --dry-run: every step on the CPU with tiny sizes (what CI runs). Exit status 1 when an
# exactness or parity check fails or a part crashes.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

OUT_DIR="${OUT:-$PWD/build/gpu_session/out}"
BUDGET=500
DRY=0
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  case "${args[$i]}" in
    --out) OUT_DIR="${args[$((i + 1))]:-$OUT_DIR}" ;;
    --out=*) OUT_DIR="${args[$i]#--out=}" ;;
    --budget) BUDGET="${args[$((i + 1))]:-$BUDGET}" ;;
    --budget=*) BUDGET="${args[$i]#--budget=}" ;;
    --dry-run) DRY=1 ;;
  esac
done
[ "$DRY" = 1 ] && [ "$BUDGET" = 500 ] && BUDGET=240
mkdir -p "$OUT_DIR"
LOG="$OUT_DIR/gpu_session.log"

{
  echo "== gpu_session $(date -u +%FT%TZ) budget ${BUDGET}s dry_run=$DRY"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total \
    --format=csv,noheader 2>&1 | head -2
  # The Python side keeps to the budget; INT (its KeyboardInterrupt) writes what was measured,
  # a KILL 20 s later is the last resort.
  timeout --signal=INT --kill-after=20 $((BUDGET + 20)) python3 scripts/gpu_session.py --out "$OUT_DIR" \
    --budget "$BUDGET" "$@"
  rc=$?
  echo "== gpu_session exit $rc"
  exit $rc
} 2>&1 | tee "$LOG"
exit "${PIPESTATUS[0]}"
