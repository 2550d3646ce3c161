#!/usr/bin/env bash
# Every CPU-scale preset of docs/results.md, one after the other (22 distinct runs, about 3.5 hours on 2 cores).
# Resumable: run it again after a stop and finished runs are kept, a stopped run resumes
# from its last checkpoint, and runs two presets share (same config) are trained once.
#
#   bash scripts/reproduce_results.sh            # writes runs/cpu/<preset>/
#   RUNS=/data/runs bash scripts/reproduce_results.sh
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
runs="${RUNS:-$here/runs/cpu}"
splitft="${SPLITFT:-$here/.venv/bin/splitft}"
for preset in methods table1 table2 fig2a fig3; do
    echo "=== $preset ($(date -u +%H:%M:%S))"
    "$splitft" compare --preset "$here/configs/cpu/$preset.toml" --out "$runs/$preset" --reuse "$runs"
done
