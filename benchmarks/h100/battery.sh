#!/usr/bin/env bash
# The H100 battery: one call builds, tests and times. Stages by name (default: all):
#   bash benchmarks/h100/battery.sh [gputests] [optimizer] [restore8] [restore16] [ckpt] [trace] [tui]
# Logs go to $OUT (device tool) or /tmp/rp-out.
cd "$(dirname "$0")/../.."
out=${OUT:-/tmp/rp-out}; mkdir -p "$out"
source benchmarks/h100/env.sh
export PYTHONUNBUFFERED=1
stages=${*:-gputests optimizer restore8 restore16 ckpt}
for stage in $stages; do
  echo "=== $stage $(date +%T)"
  case $stage in
    doctor)    restoreprof doctor 2>&1 | tee "$out/doctor.txt" ;;
    gputests)  rp_python -m pytest -q -m gpu tests/gpu tests/integration/test_offload_cycles.py -p no:cacheprovider 2>&1 | tail -25 | tee "$out/gputests.txt" ;;
    sweep)     rp_python benchmarks/sweep_reload.py --gib 8 --chunks 2 4 8 --threads 8 16 --streams 4 2>&1 | tee "$out/sweep.txt" ;;
    optimizer) rp_python benchmarks/bench_optimizer.py --gib 8 2>&1 | tee "$out/optimizer.txt" ;;
    restore8)  rp_python benchmarks/bench_gpu_restore.py --gib 8 --cold --json "$out/restore8.json" 2>&1 | grep -v '^{' | tee "$out/restore8.txt" ;;
    restore16) rp_python benchmarks/bench_gpu_restore.py --gib 16 --cold --json "$out/restore16.json" 2>&1 | grep -v '^{' | tee "$out/restore16.txt" ;;
    ckpt)      rp_python benchmarks/bench_checkpoint.py --gpu-gib 4 --procs 4 --json "$out/tree4.json" 2>&1 | tee "$out/tree4.txt" ;;
    *)         echo "unknown stage $stage" ;;
  esac
done
