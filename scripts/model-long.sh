#!/usr/bin/env bash
# The randomized model test (tests/model.rs) with a long budget: several seeds, more threads,
# rounds and operations than CI runs. Each run prints its MODEL_SEED; a failure reproduces with
# that seed. Usage: scripts/model-long.sh [runs]   (default 20)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-20}
cargo test --release --test model --no-run
for i in $(seq 1 "$runs"); do
    seed=$(( $(date +%s%N) ^ (i * 2654435761) ))
    echo "== run $i: MODEL_SEED=$seed"
    MODEL_SEED=$seed MODEL_THREADS=${MODEL_THREADS:-4} MODEL_ROUNDS=${MODEL_ROUNDS:-200} \
        MODEL_OPS=${MODEL_OPS:-2000} cargo test -q --release --test model -- --nocapture
done
