#!/usr/bin/env bash
# One script for a lent GPU machine (bench/README.md): install, the kernel tests on the real GPU, the
# ahead-of-time compile table, the xformers probe, the kernel microbenchmarks (triton, torch, compile, sdpa,
# xformers), the trainer throughput of DDPM++ CIFAR-10 at batch 512, and a short real training run (DDPM++ at
# 32x32, bf16, about 250 steps) with the Triton kernels and with the torch kernels, whose loss curves must agree.
#
#   bash bench/gpu_check.sh          # from the repository root or anywhere
#
# Every section runs under its own time limit and the script goes on after a failing one; the limits add up to
# 13 min 25 s (plus at most 10 s each to kill an overrun). Logs and results go to $OUT when it is set (else to a
# temporary folder): sections.tsv, <section>.log, aot.md, xformers.txt, kernels.json, train.json, run-triton/,
# run-torch/, and one markdown report of all of it, gpu-report.md (bench/gpu_report.py; commit it as
# docs/bench/gpu-report.md). The last thing printed is the summary table (bench/report.py).
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

# DDPM++ on the embedded MNIST at 32x32, bf16, 250 steps of 128, one log tick per 10 steps, the same seed.
TRAIN=(python train.py --preset ddpmpp --batch 128 --kimg 32 --tick-kimg 1.28 --snap-kimg 1000 --grid-size 4
       --precision bf16 --seed 1 --no-progress)

{ nvidia-smi -L 2>&1 || echo "no nvidia-smi: the sections below need a CUDA GPU"
  python -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
  git rev-parse HEAD 2>/dev/null; date -u; } > "$DEST/machine.txt" 2>&1
cat "$DEST/machine.txt"
section install 45 pip install --no-deps -e .
# A release built for this torch, without dependencies (it must not replace torch); refused with the reason if not.
section xformers_install 30 pip install --no-deps xformers
section xformers_probe 30 python -c "import kernels, sys; why = kernels.attention_unavailable('xformers', 'cuda'); \
open(sys.argv[1], 'w').write('available: kernels.attention(backend=\"xformers\") runs here' if why is None else \
'unavailable: ' + why)" "$DEST/xformers.txt"
section kernel_tests 120 env AMBIENT_NATIVE_TRITON=1 python -m pytest -q tests/test_kernels_*.py
section aot 90 python -m bench.aot_check --markdown "$DEST/aot.md" --out "$DEST/aot.json"
# --budget-s stops starting new workloads in time for the JSON to be written before the limit.
section micro 100 python -m bench.run --device cuda --sections kernels --budget-s 70 --out "$DEST/kernels.json"
section train 120 python -m bench.run --device cuda --sections train --rounds 5 --budget-s 80 --out "$DEST/train.json"
section run_triton 150 "${TRAIN[@]}" --kernels triton --run-dir "$DEST/run-triton"   # first launches autotune
section run_torch 120 "${TRAIN[@]}" --kernels torch --run-dir "$DEST/run-torch"
python -m bench.gpu_report "$DEST"
python -m bench.report --sections "$STATUS" "$DEST/kernels.json" "$DEST/train.json"
