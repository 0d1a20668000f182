#!/usr/bin/env bash
# One script for a lent GPU machine (bench/README.md): install, the kernel tests on the real GPU,
# the kernel microbenchmarks, and the trainer throughput of DDPM++ CIFAR-10 at batch 512
# (bf16 triton vs torch, eager vs torch.compile, and the fp32 eager EDM-style step).
#
#   bash bench/gpu_check.sh          # from the repository root or anywhere
#
# Every section runs under its own time limit and the script goes on after a failing one; the
# limits add up to 7 min 15 s (plus at most 10 s each to kill an overrun). Logs and JSON results
# go to $OUT when it is set (else to a temporary folder): sections.tsv, <section>.log,
# kernels.json, train.json. The last thing printed is one summary table (bench/report.py).
set -u
cd "$(dirname "$0")/.." || exit 2
DEST="${OUT:-$(mktemp -d)}"
mkdir -p "$DEST"
STATUS="$DEST/sections.tsv"
: > "$STATUS"

section() {  # NAME LIMIT_S COMMAND...: run COMMAND under a time limit, log it, record its exit code
    local name=$1 limit=$2 start=$SECONDS rc
    shift 2
    echo "== $name (limit ${limit} s): $*"
    timeout --kill-after=10 "$limit" "$@" > "$DEST/$name.log" 2>&1
    rc=$?
    tail -n 4 "$DEST/$name.log"
    printf '%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - start))" >> "$STATUS"
}

nvidia-smi -L 2>&1 || echo "no nvidia-smi: the sections below need a CUDA GPU"
section install 45 pip install --no-deps -e .
section kernel_tests 120 env AMBIENT_NATIVE_TRITON=1 python -m pytest -q tests/test_kernels_*.py
# --budget-s stops starting new workloads in time for the JSON to be written before the limit.
section micro 100 python bench/run.py --device cuda --sections kernels --budget-s 70 --out "$DEST/kernels.json"
section train 170 python bench/run.py --device cuda --sections train --rounds 5 --budget-s 110 --out "$DEST/train.json"
python bench/report.py --sections "$STATUS" "$DEST/kernels.json" "$DEST/train.json"
