#!/usr/bin/env bash
# One script for a lent GPU machine (bench/README.md). In order of importance, so that a lease cut short still
# returns the figures that matter most: the kernel tests on the real GPU; a short real training run (DDPM++ at
# 32x32, bf16, 250 steps) with the Triton kernels and with the torch kernels, whose loss curves must agree; the
# ahead-of-time compile table; the kernel microbenchmarks (triton, torch, compile, sdpa, xformers); the trainer
# throughput of DDPM++ CIFAR-10 at batch 512; the xformers probe.
#
#   bash bench/gpu_check.sh             # on the GPU machine, from the repository root or anywhere
#   bash bench/gpu_check.sh --dry-run   # on a CPU: every section's own command, at tiny sizes or interpreted
#
# It installs nothing and downloads nothing: every command runs from this checkout (PYTHONPATH), with the
# machine's python, else python3 (or $PYTHON). The dry run appends tiny sizes to each command (later flags
# override earlier ones), runs the Triton kernels under the interpreter and writes the same files, so a broken
# command, a missing file, a wrong flag or a report that cannot be written shows on a CPU (tests/test_gpu_check.py).
#
# Every section runs under its own time limit and the script goes on after a failing one; the limits add up to
# 12 min 25 s, and with KILL_AFTER_S to kill each overrun to at most 13 min (a dry run allows DRY_LIMIT_SCALE times
# each limit: a shared 2-core CPU interpreting the kernels is slower than the GPU machine). Logs and results go to $OUT when
# it is set (else to a temporary folder): sections.tsv, <section>.log, machine.txt, aot.md, aot.json, kernels.json,
# train.json, xformers.txt, run-triton/, run-torch/, and gpu-report.md, one markdown report of all of it
# (bench/gpu_report.py, rewritten after every section; commit it as docs/bench/gpu-report.md). The last thing
# printed is the summary table (bench/report.py). Exit code 1 when a section failed.
set -u
cd "$(dirname "$0")/.." || exit 2
DRY=0
case "${1:-}" in
    --dry-run) DRY=1 ;;
    "") ;;
    *) echo "usage: bash bench/gpu_check.sh [--dry-run]" >&2; exit 2 ;;
esac
PY="${PYTHON:-$(command -v python || command -v python3)}"
[ -n "$PY" ] || { echo "no python or python3 on PATH; set PYTHON" >&2; exit 2; }
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
DEST="${OUT:-$(mktemp -d)}"
mkdir -p "$DEST" || exit 2
STATUS="$DEST/sections.tsv"
: > "$STATUS"
KILL_AFTER_S=5
DRY_LIMIT_SCALE=2

section() {  # NAME LIMIT_S COMMAND...: run COMMAND under a time limit, log it, record its exit code, rewrite the report
    local name=$1 limit=$(($2 * (DRY ? DRY_LIMIT_SCALE : 1))) start=$SECONDS rc
    shift 2
    echo "== $name (limit ${limit} s): $*"
    timeout --kill-after=$KILL_AFTER_S "$limit" "$@" > "$DEST/$name.log" 2>&1
    rc=$?
    tail -n 4 "$DEST/$name.log"
    printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - start))" "$limit" >> "$STATUS"
    "$PY" -m bench.gpu_report "$DEST" > /dev/null || echo "gpu-report.md could not be written"
}

# DDPM++ on the embedded MNIST at 32x32, bf16, 250 steps of 128, one log tick per 10 steps, the same seed.
TRAIN=("$PY" train.py --preset ddpmpp --batch 128 --kimg 32 --tick-kimg 1.28 --snap-kimg 1000 --grid-size 4
       --precision bf16 --seed 1 --no-progress)
if ((DRY)); then
    export TRITON_INTERPRET=1       # read when kernels/ is imported: the Triton kernels run on the CPU
    KERNEL_TESTS=(env -u AMBIENT_NATIVE_TRITON)   # tests/conftest.py interprets without a GPU
    DRY_TESTS=(-k "bad_inputs or refused or this_interpreter" --maxfail 1)
    DRY_TRAIN=(--device cpu --data digits --preset tiny --model-channels 8 --batch 2 --kimg 0.008 --tick-kimg 0.002
               --grid-size 1)
    DRY_AOT=(--only "noise+loss tiny 1x32x32 fp32")
    DRY_MICRO=(--device cpu --smoke --presets tiny --rounds 1)
    DRY_STEP=(--device cpu --quick --presets tiny --rounds 1 --only train/tiny/b32/fp32/torch/eager)
else
    KERNEL_TESTS=(env AMBIENT_NATIVE_TRITON=1)    # compiled for the GPU, not interpreted
    DRY_TESTS=() DRY_TRAIN=() DRY_AOT=() DRY_MICRO=() DRY_STEP=()
fi

{ if command -v nvidia-smi > /dev/null; then nvidia-smi -L 2>&1; else echo "no nvidia-smi: no CUDA GPU here"; fi
  "$PY" -c "import sys, numpy, torch, triton, kernels; print('python', sys.version.split()[0], 'numpy', \
numpy.__version__, 'torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__); \
print('kernels from', kernels.__path__[0])"
  git rev-parse HEAD 2>/dev/null; date -u; ((DRY)) && echo "dry run: CPU, tiny sizes, Triton interpreted"; } \
    > "$DEST/machine.txt" 2>&1
cat "$DEST/machine.txt"
section kernel_tests 120 "${KERNEL_TESTS[@]}" "$PY" -m pytest -q tests/test_kernels_*.py "${DRY_TESTS[@]}"
section run_triton 150 "${TRAIN[@]}" --kernels triton --run-dir "$DEST/run-triton" "${DRY_TRAIN[@]}"  # autotunes
section run_torch 120 "${TRAIN[@]}" --kernels torch --run-dir "$DEST/run-torch" "${DRY_TRAIN[@]}"
section aot 90 env -u TRITON_INTERPRET "$PY" -m bench.aot_check --markdown "$DEST/aot.md" --out "$DEST/aot.json" \
    "${DRY_AOT[@]}"
# --budget-s stops starting new workloads in time for the JSON to be written before the limit.
section micro 100 "$PY" -m bench.run --device cuda --sections kernels --budget-s 70 --out "$DEST/kernels.json" \
    "${DRY_MICRO[@]}"
section train 120 "$PY" -m bench.run --device cuda --sections train --rounds 5 --budget-s 80 \
    --out "$DEST/train.json" "${DRY_STEP[@]}"
# What is installed, if anything: a release built for this torch is used, otherwise refused with the reason.
section xformers_probe 45 "$PY" -c "import kernels, sys; why = kernels.attention_unavailable('xformers', 'cuda'); \
open(sys.argv[1], 'w').write('available: kernels.attention(backend=\"xformers\") runs here' if why is None else \
'unavailable: ' + why)" "$DEST/xformers.txt"
"$PY" -m bench.gpu_report "$DEST" || exit 1
"$PY" -m bench.report --sections "$STATUS" "$DEST/kernels.json" "$DEST/train.json" || exit 1
! cut -f2 "$STATUS" | grep -qv '^0$'     # every section exited 0
