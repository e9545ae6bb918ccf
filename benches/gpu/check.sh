#!/usr/bin/env bash
# The GPU check: one command that proves the CUDA path and measures it (benches/gpu/README.md).
#
#   bash benches/gpu/check.sh              on the CUDA machine: carried wheels, the CUDA build,
#                                          pytest -m gpu, then the harness's measured phases
#   bash benches/gpu/check.sh --dry-run    on a CPU: the same harness at tiny sizes (CI runs it)
#   options: --budget SECONDS (default 560, from the start), --skip-tests, --phases a,b,
#            --rebuild (build the extension even if a warm machine has it)
#
# Writes into $OUT (default /tmp/gpu_check_out): gpu_check.json, steps.txt, pytest_gpu.xml,
# trace_clockwork_sd15.json.gz. A failed step is recorded in steps.txt and the next runs.
# $PYTHON (default python3) is the interpreter.
set -uo pipefail
cd "$(dirname "$0")/../.."
DRY=0 BUDGET=560 TESTS=1 REBUILD=0 PHASES=()
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --budget) BUDGET=$2; shift ;;
    --skip-tests) TESTS=0 ;;
    --rebuild) REBUILD=1 ;;
    --phases) PHASES=(--phases "$2"); shift ;;
    *) echo "check.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
OUT=${OUT:-/tmp/gpu_check_out}
mkdir -p "$OUT"
: > "$OUT/steps.txt"
START=$(date +%s)
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
PY=${PYTHON:-python3}  # the interpreter with torch (the machine's python3; tests pass their own)

step() {  # step NAME CMD...: run it, append "NAME rc seconds" to steps.txt
  local name=$1 t0 rc
  shift
  t0=$(date +%s)
  echo "== $name: $*"
  "$@"
  rc=$?
  echo "$name $rc $(( $(date +%s) - t0 ))" >> "$OUT/steps.txt"
  echo "== $name: rc $rc after $(( $(date +%s) - t0 )) s"
  return $rc
}

if [ "$DRY" = 0 ]; then
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv || true
  # diffusers is not on that machine: its wheel travels in .whl/ (fetch_wheels.sh).
  step wheels "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  # The engine with its extension built for this GPU (sm_90) with the CUDA kernels in it; on a
  # warm machine that has it from an earlier call, not again (unless --rebuild).
  if [ "$REBUILD" = 1 ] || ! "$PY" -c "from clockwork_engine import _C; assert _C.built_with_cuda" 2>/dev/null; then
    step build env CLOCKWORK_CUDA=1 CLOCKWORK_CUDA_ARCHS=9.0 MAX_JOBS=16 "$PY" -m pip install -q --no-index \
      --no-deps --no-build-isolation -e . || exit 1
  else
    echo "== build: clockwork_engine._C with CUDA is installed already (--rebuild builds it again)"
  fi
  if [ "$TESTS" = 1 ]; then
    # TRITON_INTERPRET=0: conftest.py turns the interpreter on for the CPU tests, and only
    # this file runs, so no CPU kernel test imports triton first. The tests run beside the
    # harness's first phase, whose warm-up compiles for minutes: the harness waits for them
    # (tests.pid) before it times anything.
    step gpu_tests env TRITON_INTERPRET=0 timeout 240 "$PY" -m pytest -q -m gpu -p no:cacheprovider \
      --junitxml="$OUT/pytest_gpu.xml" tests/test_gpu_cuda.py > "$OUT/pytest_gpu.log" 2>&1 &
    echo $! > "$OUT/tests.pid"
  fi
  DRYFLAG=()
else
  DRYFLAG=(--dry-run)
fi
LEFT=$(( BUDGET - ($(date +%s) - START) ))
step harness "$PY" benches/gpu/harness.py --out "$OUT" --budget "$LEFT" "${DRYFLAG[@]}" "${PHASES[@]}"
rc=$?
LEFT=$(( BUDGET - ($(date +%s) - START) ))
if [ "$rc" -gt 1 ] && [ "$LEFT" -gt 60 ]; then
  # The process died (a signal: 128 + its number), not a phase failing (1): the JSON marks the
  # phase it died in; run the phases after it.
  step harness_resumed "$PY" benches/gpu/harness.py --out "$OUT" --budget "$LEFT" --resume "${DRYFLAG[@]}" \
    "${PHASES[@]}"
  rc=$?
fi
if [ -f "$OUT/tests.pid" ]; then
  wait "$(cat "$OUT/tests.pid")"
  tail -5 "$OUT/pytest_gpu.log"
  rm -f "$OUT/tests.pid"
fi
echo "== done in $(( $(date +%s) - START )) s; results in $OUT"
exit $rc
