#!/usr/bin/env bash
# The pre-registered runs of issues 22 and 23, in the order they run, each from a worktree at a fixed commit.
# Run from the main checkout's root, again in every session (a session ends its processes):
#
#     nohup bash docs/study/queue.sh > queue.log 2>&1 &
#
# Everything is resumable: a finished point is skipped, a started one continues from its last checkpoint, a scored
# FID is not scored again. Plans and principles: docs/study/README.md (Table 1 seeds, price list) and
# docs/methods/README.md (methods). Results go into this checkout's docs/.
set -euo pipefail
MAIN=$PWD
STUDY_COMMIT=ab971ea      # the Table-1 study's training step (bit-identical to 04dd9b0's, on which seeds 0-2 ran)
METHODS_COMMIT=ca56350    # the methods and the price list: restoration rounds in studies, the pinned configs

data() {                  # data DIR: the study's data sets under DIR/data (MNIST-5k at 16x16 and its subsets)
    local sizes=("mnist16.zip" "mnist16-1k.zip 1000" "mnist16-500.zip 500") name max
    for entry in "${sizes[@]}"; do
        read -r name max <<< "$entry"
        [ -e "$1/data/$name" ] || (cd "$1" && python -m ambient.dataset_tool --source mnist --dest "data/$name" \
            --resolution 16 ${max:+--max-images "$max"})
    done
}

worktree() {              # worktree DIR COMMIT: a detached worktree at COMMIT with the data sets
    [ -d "$1" ] || git worktree add --detach "$1" "$2"
    data "$1"
}

study() {                 # study DIR ARGS...: python -m ambient.study ARGS from DIR, at the lowest priority
    local dir=$1
    shift
    (cd "$dir" && nice -n 19 python -m ambient.study "$@")
}

data "$MAIN"
worktree ../study-code "$STUDY_COMMIT"
worktree ../methods-code "$METHODS_COMMIT"

# Issue 22 item 4 needs each noisy-only point's checkpoint, and checkpoints (points/NAME/run, not committed) do not
# outlive the session that trained them: a finished noisy-only point is evaluated stopped at sigma_n within the
# session that has its run. stop_finished does it for every such point here (by the methods' commit, whose study has
# --eval-stop-noisy; a point selected alone, so nothing else is trained, its report written aside).
stop_finished() {
    local folder name seed sigma
    for folder in "$MAIN"/docs/study/points/c0_n1000_s*_seed*; do
        [ -e "$folder/metrics.json" ] && [ -d "$folder/run" ] && [ ! -e "$folder/stop-metrics.json" ] || continue
        name=$(basename "$folder") && sigma=${name#c0_n1000_s} && sigma=${sigma%_seed*} && seed=${name##*_seed}
        study ../methods-code --config docs/study/cpu.toml --dir "$MAIN/docs/study" --results "$MAIN/../stop-report" \
            --n-clean= --points 0:1000 --sigma-n "$sigma" --setting-seeds= --seeds "$seed" --eval-stop-noisy || true
    done
}

# Issue 22: the power plan's seeds of Table 1, the noisy-only ones evaluated stopped as they finish.
(while sleep 300; do stop_finished; done) &
sweeper=$!
trap 'kill $sweeper 2> /dev/null || true' EXIT
study ../study-code --config docs/study/cpu.toml --dir "$MAIN/docs/study"
kill $sweeper
stop_finished
# Issue 22 item 4: the noisy-only points finished in an earlier session have no checkpoint here. Each is trained
# again at the study's commit (the same model on the same host kind: its metrics.json must equal the committed one),
# the two sigma_n of a seed side by side, its run moved into the point and evaluated stopped at once.
for seed in $(seq 0 11); do
    sigmas=()
    for sigma in 0.2 0.4; do
        folder=$MAIN/docs/study/points/c0_n1000_s${sigma}_seed$seed
        [ -e "$folder/metrics.json" ] && [ ! -d "$folder/run" ] && [ ! -e "$folder/stop-metrics.json" ] && sigmas+=("$sigma")
    done
    [ ${#sigmas[@]} -gt 0 ] || continue
    study ../study-code --config docs/study/cpu.toml --dir ../retrain --n-clean= --setting-seeds= --points 0:1000 \
        --sigma-n "$(IFS=,; echo "${sigmas[*]}")" --seeds "$seed" --eval-snapshots 1
    for sigma in "${sigmas[@]}"; do
        name=c0_n1000_s${sigma}_seed$seed
        # Another model (not the committed one) is never evaluated in its place: the point stays without stop figures.
        python -c "import json, sys; a, b = (json.load(open(f))['fd_mnist'] for f in sys.argv[1:3]); print(sys.argv[3],
            'trained again: FD-MNIST', a, 'committed', b, 'the same' if a == b else 'DIFFERENT'); sys.exit(a != b)" \
            "../retrain/points/$name/metrics.json" "$MAIN/docs/study/points/$name/metrics.json" "$name" &&
            mv "../retrain/points/$name/run" "$MAIN/docs/study/points/$name/run" || true
    done
    stop_finished
done
study "$MAIN" --config docs/study/cpu.toml --score-fid

# Issue 23: the methods beside plain training, then issue 22's price list, then the costliest method.
for config in docs/methods/windows.toml docs/methods/restore.toml docs/study/price.toml docs/methods/consistency.toml; do
    dir=$(python -c "import sys, tomllib; print(tomllib.load(open(sys.argv[1], 'rb'))['dir'])" "$config")
    study ../methods-code --config "$config" --dir "$MAIN/$dir"
    study "$MAIN" --config "$config" --score-fid
done
