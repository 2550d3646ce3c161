#!/usr/bin/env bash
# The compression trade-off of docs/results.md ("Compression"): each setting x seeds 0-2 on
# configs/cpu/compression.toml, one run at a time; a run already finished is skipped.
#   scripts/compression_runs.sh [OUT]     (default runs/cpu/compression)
set -euo pipefail
out=${1:-runs/cpu/compression}
base=configs/cpu/compression.toml
declare -A SETTINGS=(
  [fp32]=""
  [rcut1]="--lora.r_cut 1"
  [int8]="--codec.activations int8 --codec.gradients int8 --codec.adapters delta-int8"
  [int4]="--codec.activations int4 --codec.gradients topk:0.05 --codec.adapters delta-int4"
  [int2]="--codec.activations int4 --codec.gradients topk:0.02 --codec.adapters delta-int2"
)
ORDER="fp32:0 int4:0 int2:0 fp32:1 int2:1 fp32:2 int2:2 int4:1 int4:2 rcut1:0 rcut1:1 rcut1:2 int8:0 int8:1 int8:2"
for item in ${RUNS:-$ORDER}; do
  name=${item%%:*} seed=${item##*:}
  dir=$out/$name-s$seed
  [[ -f $dir/summary.json ]] && continue
  rm -rf "$dir"
  # shellcheck disable=SC2086
  splitft train --config "$base" --seed "$seed" ${SETTINGS[$name]} --out "$dir" > "$out/$name-s$seed.log" 2>&1
done
