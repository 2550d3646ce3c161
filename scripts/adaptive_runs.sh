#!/usr/bin/env bash
# The adaptive-cuts matrix of docs/results.md ("Adaptive cuts that pay off"): every cell x method
# x seed on configs/cpu/adaptive/base.toml, one run at a time. A finished run is skipped, an
# interrupted one resumed from its checkpoint, one stopped before its first checkpoint restarted.
#
#   scripts/adaptive_runs.sh OUT SEED [SEED ...]      e.g. scripts/adaptive_runs.sh runs/cpu/adaptive 0 1 2
#
# The heterogeneous cells run every seed given, the homogeneous ones the first only. Settings
# (environment): SERVER_ADAPTERS=per-client|shared (split.server_adapters of every run; measure
# both on one seed first and keep the better), WIRE_FORMATS="fp32,int8" (splitft chooses its
# wire format per client from this list; empty = fp32 for all), FIXED_CUT (sfl-fixed's cut, 5),
# CELLS and METHODS (subsets, space-separated), SPLITFT (the splitft command, default `splitft`).
# Runs land in OUT/<cell>/<method>-s<seed>/ with a log next to each.
set -euo pipefail
out=${1:?usage: $0 OUT SEED [SEED ...]}
shift
seeds=("${@:-0}")
base=configs/cpu/adaptive/base.toml
splitft=${SPLITFT:-splitft}
declare -A CELL=(
  [hetero-static-idle]="--devices.preset hetero --devices.conditions static --devices.server idle"
  [hetero-static-busy]="--devices.preset hetero --devices.conditions static --devices.server busy"
  [hetero-changing-idle]="--devices.preset hetero --devices.conditions changing --devices.server idle"
  [hetero-changing-busy]="--devices.preset hetero --devices.conditions changing --devices.server busy"
  [homogeneous-idle]="--devices.preset homogeneous --devices.conditions static --devices.server idle"
  [homogeneous-busy]="--devices.preset homogeneous --devices.conditions static --devices.server busy"
)
declare -A METHOD=(
  [sfl-fixed]="--method sfl-fixed --policy.name fixed --split.cuts ${FIXED_CUT:-5}"
  [resource]="--method splitft --policy.name resource --policy.predict_from profile"
  [splitft]="--method splitft --policy.name splitft${WIRE_FORMATS:+ --policy.wire_formats $WIRE_FORMATS}"
)
cells=${CELLS:-hetero-static-busy hetero-changing-busy hetero-static-idle hetero-changing-idle homogeneous-busy homogeneous-idle}
methods=${METHODS:-sfl-fixed resource splitft}
for seed in "${seeds[@]}"; do
  for cell in $cells; do
    [[ $cell == homogeneous-* && $seed != "${seeds[0]}" ]] && continue
    for method in $methods; do
      dir=$out/$cell/$method-s$seed
      log=$out/$cell/$method-s$seed.log
      [[ -f $dir/summary.json ]] && continue
      mkdir -p "$out/$cell"
      echo "$(date +%H:%M:%S) $cell $method seed $seed"
      if [[ -d $dir/checkpoint ]]; then
        $splitft train --resume "$dir" >> "$log" 2>&1
      else
        rm -rf "$dir"
        # shellcheck disable=SC2086
        $splitft train --config "$base" --seed "$seed" --split.server_adapters "${SERVER_ADAPTERS:-per-client}" \
          ${CELL[$cell]} ${METHOD[$method]} --out "$dir" > "$log" 2>&1
      fi
    done
  done
done
