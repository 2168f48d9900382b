#!/usr/bin/env bash
# One lease of a GPU machine: build the extension, run the CUDA tests, benchmark, profile.
#
#   bash benchmarks/gpu_session.sh [build] [test] [bench] [arch]      (default: all four)
#
# Meant for a machine whose python3 already holds a CUDA torch (the lent H100/H200 image); it
# builds mtlkit._C in place for sm_90 only (MAX_JOBS = all cores) unless a prebuilt
# mtlkit/_C*.so is present and SKIP_BUILD=1. Logs and JSON go to $OUT (default ./gpu_out).
# Every stage has its own time limit (seconds, env BUILD_S/TEST_S/BENCH_S/ARCH_S) so a slow
# stage cannot eat the whole lease; whatever was written before a limit is kept.
# TEST_ARGS="-k 'cuda_tc or band'" runs only the experimental implementations' tests.
set -u
OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
export MTLKIT_REQUIRE_EXT=1
stages=${*:-build test bench arch}
has() { [[ " $stages " == *" $1 "* ]]; }

{
  date -u +%FT%TZ
  git rev-parse --short HEAD 2>/dev/null || echo "no git"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
  python3 -c "import torch, sys; print(sys.version.split()[0], torch.__version__, torch.version.cuda)"
  nvcc --version | tail -2
} 2>&1 | tee "$OUT/env.txt"

if has build && [ "${SKIP_BUILD:-0}" != 1 ]; then
  t0=$SECONDS
  rm -f mtlkit/_C*.so
  MTLKIT_BUILD_CUDA=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=$(nproc) \
    MTLKIT_PTXAS_VERBOSE=1 timeout "${BUILD_S:-300}" python3 setup.py -q build_ext --inplace \
    >"$OUT/build.log" 2>&1
  echo "build rc=$? in $((SECONDS - t0)) s"
  grep -E "error|spill" "$OUT/build.log" | grep -v " 0 bytes spill" | head -20
  cp mtlkit/_C*.so "$OUT/" 2>/dev/null
fi
python3 -c "from mtlkit.ops import _loader as l; print('HAS_CUDA_OPS', l.HAS_CUDA_OPS, l.CUDA_OPS_ERROR)"

if has test; then
  t0=$SECONDS
  timeout "${TEST_S:-240}" python3 -m pytest -q -p no:cacheprovider -m cuda tests/ops \
    ${TEST_ARGS:-} --tb=short >"$OUT/tests.log" 2>&1
  echo "tests rc=$? in $((SECONDS - t0)) s"
  grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/tests.log" | tail -40
fi

if has bench; then
  t0=$SECONDS
  timeout "${BENCH_S:-240}" python3 benchmarks/bench_ops.py --kernels "${KERNELS:-all}" \
    --shapes "${SHAPES:-nyud}" --dtypes "${DTYPES:-bf16,fp32}" --repeats "${REPEATS:-30}" \
    --out "$OUT/bench_ops.json" >"$OUT/bench.log" 2>&1
  echo "bench rc=$? in $((SECONDS - t0)) s"
fi

if has arch; then
  # whole model under auto vs the old default (every op on its cuda kernel) vs the references,
  # with every op's candidates timed first (--tune); the tuning cache stays in $OUT
  t0=$SECONDS
  for a in ${ARCHS:-bfci tpim}; do
    MTLKIT_CACHE="$OUT/cache" timeout "${ARCH_S:-300}" python3 -m cli.main profile --tune \
      --arch "$a" --size "${ARCH_SIZE:-480x640}" --batch-size "${ARCH_BATCH:-8}" --amp \
      --json "$OUT/arch_$a.json" >>"$OUT/arch.log" 2>&1
    echo "arch $a rc=$?"
  done
  echo "arch stage in $((SECONDS - t0)) s"
fi
