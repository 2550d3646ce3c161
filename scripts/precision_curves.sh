#!/usr/bin/env bash
# Loss curves of the main job's shape in fp32 (as before) and in the fast mode (bf16 base +
# loss_chunk 128), seeds 0-2, one run at a time with one torch thread, then a comparison:
# per round, the fast mode's train loss against fp32 of the same seed (same batches) and the
# spread of fp32 over the three seeds. docs/benchmarks.md has the numbers it printed.
#
#   bash scripts/precision_curves.sh [OUT_DIR] [ROUNDS]     # defaults: runs/precision-curves 10
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-runs/precision-curves}"
rounds="${2:-10}"
py="${PYTHON:-.venv/bin/python}"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" OMP_NUM_THREADS=1
mkdir -p "$out"
for seed in 0 1 2; do
    for mode in fp32 bf16; do
        [ -f "$out/$mode-s$seed/summary.json" ] && continue
        extra=()
        [ "$mode" = bf16 ] && extra=(--compute_dtype bf16 --loss_chunk 128)
        rm -rf "$out/$mode-s$seed"
        "$py" -m splitft.cli train --out "$out/$mode-s$seed" --federation.rounds "$rounds" --seed "$seed" \
            --threads 1 "${extra[@]}" >"$out/$mode-s$seed.log" 2>&1
    done
done
"$py" scripts/compare_curves.py "$out"
