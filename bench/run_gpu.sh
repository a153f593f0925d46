#!/usr/bin/env bash
# Builds skv for the GPU found here, runs the GPU tests (SKV_REQUIRE_GPU=1), compute-sanitizer
# memcheck and racecheck on them, the CUDA benchmarks and the CUDA example, then prints a short
# table. Logs and the benchmark JSON go to $OUT when it is set (else build/gpu/results).
#   bench/run_gpu.sh                 everything
#   SKV_SKIP_SANITIZER=1 bench/run_gpu.sh
#   SKV_BENCH_FILTER='BM_decode' bench/run_gpu.sh
# Google Test and Google Benchmark are found through CMAKE_PREFIX_PATH=$SKV_DEPS (default build/deps)
# when they are not installed system-wide.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
BUILD=${SKV_GPU_BUILD:-$ROOT/build/gpu}
RESULTS=${OUT:-$BUILD/results}
mkdir -p "$RESULTS"
JOBS=${SKV_JOBS:-$(nproc)}
status=0

if ! command -v nvidia-smi >/dev/null || ! nvidia-smi >/dev/null 2>&1; then
  echo "run_gpu.sh: no NVIDIA GPU found (nvidia-smi failed); nothing to do"
  exit 0
fi
CC=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d ' .')
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
echo "== GPU: $GPU (sm_$CC), $(date -u +%Y-%m-%dT%H:%MZ)" | tee "$RESULTS/device.txt"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv >>"$RESULTS/device.txt" 2>&1

echo "== configure + build (sm_$CC, $JOBS jobs)"
DEPS=${SKV_DEPS:-$ROOT/build/deps}
cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$DEPS" -DCMAKE_CUDA_ARCHITECTURES="$CC" -DSKV_BUILD_EXAMPLES=ON \
  -DSKV_BUILD_BENCH=ON -DSKV_BUILD_TESTS=ON >"$RESULTS/build.log" 2>&1 || { tail -30 "$RESULTS/build.log"; exit 1; }
targets="skv_cuda_tests"
[ -z "${SKV_SKIP_BENCH:-}" ] && targets="$targets skv_bench_cuda"
grep -q "cuda_decode" "$BUILD/Makefile" "$BUILD/build.ninja" 2>/dev/null && targets="$targets cuda_decode"
cmake --build "$BUILD" -j"$JOBS" --target $targets >>"$RESULTS/build.log" 2>&1 || { grep -E "error" "$RESULTS/build.log" | head -30; tail -30 "$RESULTS/build.log"; exit 1; }
TESTS=$(find "$BUILD" -name skv_cuda_tests -type f -perm -u+x | head -1)

echo "== GPU tests (SKV_REQUIRE_GPU=1)"
SKV_REQUIRE_GPU=1 "$TESTS" --gtest_brief=1 2>&1 | tee "$RESULTS/tests.log" | tail -40
test_rc=${PIPESTATUS[0]}
[ "$test_rc" -ne 0 ] && status=1

san_mem="skipped"; san_race="skipped"
if [ -z "${SKV_SKIP_SANITIZER:-}" ] && command -v compute-sanitizer >/dev/null; then
  # A reduced set under the sanitizers (they run kernels 10-100x slower): one config per suite.
  SAN_FILTER=${SKV_SANITIZER_FILTER:-'GpuCache/0.*:GpuCache/10.*:GpuCache/12.*:GpuAppend.*:GpuDecode/3.*:GpuDecode/9.*:GpuDecode/11.*:GpuDecodeFp16Baseline.*:GpuErrors.*'}
  echo "== compute-sanitizer memcheck"
  SKV_REQUIRE_GPU=1 timeout ${SKV_SANITIZER_TIMEOUT:-240} compute-sanitizer --tool memcheck --error-exitcode 99 "$TESTS" --gtest_filter="$SAN_FILTER" --gtest_brief=1 \
    >"$RESULTS/memcheck.log" 2>&1; rc=$?
  tail -5 "$RESULTS/memcheck.log"; san_mem=$([ $rc -eq 0 ] && echo clean || echo "FAILED rc=$rc"); [ $rc -ne 0 ] && status=1
  echo "== compute-sanitizer racecheck"
  SKV_REQUIRE_GPU=1 timeout ${SKV_SANITIZER_TIMEOUT:-240} compute-sanitizer --tool racecheck --error-exitcode 99 "$TESTS" --gtest_filter="$SAN_FILTER" --gtest_brief=1 \
    >"$RESULTS/racecheck.log" 2>&1; rc=$?
  tail -5 "$RESULTS/racecheck.log"; san_race=$([ $rc -eq 0 ] && echo clean || echo "FAILED rc=$rc"); [ $rc -ne 0 ] && status=1
fi

EX=$(find "$BUILD" -name cuda_decode -type f -perm -u+x | head -1)
if [ -n "$EX" ]; then
  echo "== example cuda_decode"
  "$EX" 2>&1 | tee "$RESULTS/example.log" | tail -8 || status=1
fi

if [ -z "${SKV_SKIP_BENCH:-}" ]; then
  BENCH=$(find "$BUILD" -name skv_bench_cuda -type f -perm -u+x | head -1)
  echo "== benchmarks"
  "$BENCH" --benchmark_filter="${SKV_BENCH_FILTER:-.}" --benchmark_out="$RESULTS/bench.json" --benchmark_out_format=json \
    >"$RESULTS/bench.log" 2>&1 || { status=1; tail -20 "$RESULTS/bench.log"; }
  python3 - "$RESULTS/bench.json" <<'PY' | tee "$RESULTS/summary.txt"
import json, sys
d = json.load(open(sys.argv[1]))
print("device:", d["context"].get("device"), " date:", d["context"].get("date"))
rows = [b for b in d["benchmarks"] if b.get("run_type", "iteration") == "iteration"]
for b in rows:
    if b["name"].startswith("BM_copy"):
        print(f"copy bandwidth (read+write): {b['GBps']:.0f} GB/s")
print(f"{'kernel':<8}{'batch':>6}{'context':>9}{'us':>10}{'GB/s':>9}{'%copy':>7}{'x fp16':>8}{'splits':>7}")
for b in rows:
    n = b["name"]
    if not n.startswith("BM_decode"): continue
    a = n.split("/")
    print(f"{b.get('label',''):<8}{a[1]:>6}{a[2]:>9}{b['us']:>10.1f}{b['GBps']:>9.0f}{b['pct_copy']:>7.1f}{b.get('speedup',0):>8.2f}{int(b.get('splits',0)):>7}")
print(f"{'append':<8}{'batch':>6}{'tokens':>9}{'us':>10}{'GB/s':>9}{'%copy':>7}{'Mtok/s':>8}")
for b in rows:
    n = b["name"]
    if not n.startswith("BM_append"): continue
    a = n.split("/")
    print(f"{b.get('label',''):<8}{a[1]:>6}{a[2]:>9}{b['us']:>10.1f}{b['GBps']:>9.0f}{b['pct_copy']:>7.1f}{b['tokens_per_s']/1e6:>8.2f}")
PY
fi

echo "== summary: tests rc=$test_rc, memcheck $san_mem, racecheck $san_race"
exit $status
