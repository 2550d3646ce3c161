#!/usr/bin/env bash
# Run named settings x seeds of one base config, one run at a time; a finished run (its
# summary.json exists) is skipped, an unfinished one is started again, so the matrix resumes.
#
#   scripts/run_matrix.sh BASE_CONFIG OUT SETTINGS_FILE NAME:SEED [NAME:SEED ...]
#
# SETTINGS_FILE has one setting per line, "name: --section.field value ..." (the overrides of
# `splitft train`); blank lines and lines starting with # are ignored. Each run goes to
# OUT/NAME-sSEED, its log to OUT/NAME-sSEED.log.
set -euo pipefail
base=$1 out=$2 settings=$3
shift 3
splitft=${SPLITFT:-splitft}
mkdir -p "$out"
declare -A ARGS=()
while IFS= read -r line; do
  [[ -z ${line// } || $line == \#* ]] && continue
  ARGS[${line%%:*}]=${line#*:}
done < "$settings"
for item in "$@"; do
  name=${item%%:*} seed=${item##*:}
  [[ -v ARGS[$name] ]] || { echo "error: setting '$name' is not in $settings" >&2; exit 2; }
  dir=$out/$name-s$seed
  [[ -f $dir/summary.json ]] && continue
  rm -rf "$dir"
  echo "$(date +%T) $name seed $seed -> $dir"
  # shellcheck disable=SC2086
  $splitft train --config "$base" --seed "$seed" ${ARGS[$name]} --out "$dir" > "$dir.log" 2>&1
done
