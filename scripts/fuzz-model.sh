#!/usr/bin/env bash
# Coverage-guided fuzzing of the model harness (tests/harness/model.rs through
# fuzz/fuzz_targets/model.rs) with cargo-fuzz on stable Rust (no sanitizer: `-s none`).
# Usage: scripts/fuzz-model.sh [seconds]   (default 600)
# Installs cargo-fuzz if it is missing. The working corpus is fuzz/corpus/model (not committed),
# started from fuzz/cases/model; a failing input is written to fuzz/artifacts/model/ — copy it to
# fuzz/cases/model/ (with the fix) so that tests/model_fuzz_cases.rs replays it in `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-600}
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz
mkdir -p fuzz/corpus/model
cp -n fuzz/cases/model/* fuzz/corpus/model/
cargo fuzz run -s none model fuzz/corpus/model -- -max_total_time="$secs" -rss_limit_mb=4096
