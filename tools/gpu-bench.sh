#!/usr/bin/env bash
# gaze beside PyTorch on an NVIDIA GPU: builds the `tch` backend (libtorch from the Python's
# torch 2.9.0, whose PyPI wheel is a CUDA build) and the `cuda` backend (CubeCL; its build
# downloads an LLVM bundle, so it may fail offline), runs `cargo xtask bench` for each with
# PyTorch on the GPU in the same invocation, and appends the figures to docs/optimization-log.md.
#
#   GAZE_PYTHON=/path/to/venv/bin/python tools/gpu-bench.sh [repeats]
#
# Needs: nvidia-smi, a Python with torch 2.9.0 and timm 1.0.20, cargo. Writes
# target/gpu-bench/{tch,cuda}.json and the build/run logs beside them.
set -uo pipefail

cd "$(dirname "$0")/.."
repeats="${1:-5}"
python="${GAZE_PYTHON:-python3}"
out=target/gpu-bench
mkdir -p "$out"

if ! nvidia-smi --query-gpu=name,memory.total --format=csv,noheader >"$out/gpu.txt" 2>&1; then
    echo "no NVIDIA GPU visible (nvidia-smi failed): $(cat "$out/gpu.txt")" >&2
    exit 1
fi
if ! "$python" -c 'import torch, timm; assert torch.cuda.is_available()' 2>"$out/python.txt"; then
    echo "$python cannot use torch + timm on the GPU: $(tail -1 "$out/python.txt")" >&2
    exit 1
fi
gpu="$(head -1 "$out/gpu.txt")"
torch_version="$("$python" -c 'import torch; print(torch.__version__)')"

# backend gaze-device
runs=("tch tch-cuda" "cuda cuda")
done_any=0
for run in "${runs[@]}"; do
    read -r backend device <<<"$run"
    echo "== $backend on $device" >&2
    if GAZE_PYTHON="$python" cargo xtask bench --backend "$backend" --device "$device" \
        --torch-device cuda --repeats "$repeats" --json "$out/$backend.json" \
        >"$out/$backend.log" 2>&1; then
        done_any=1
        tail -8 "$out/$backend.log" >&2
    else
        echo "$backend failed; see $out/$backend.log (last lines below)" >&2
        tail -5 "$out/$backend.log" >&2
    fi
done
[ "$done_any" = 1 ] || exit 1

# Append a dated section with one table per backend that ran.
{
    echo
    echo "## GPU: $gpu ($(date -u +%Y-%m-%d), \`tools/gpu-bench.sh $repeats\`)"
    echo
    echo "PyTorch $torch_version on the same GPU in the same invocation; images/s (caption: seconds"
    echo "per 127-token caption); ratio above 1 means gaze is faster."
    for run in "${runs[@]}"; do
        read -r backend device <<<"$run"
        [ -s "$out/$backend.json" ] || continue
        echo
        echo "| workload ($backend, --device $device) | unit | gaze | PyTorch | ratio |"
        echo "|---|---|---|---|---|"
        "$python" - "$out/$backend.json" <<'PY'
import json, sys
for r in json.load(open(sys.argv[1]))["rows"]:
    f = lambda v: "-" if v is None else f"{v:.3g}"
    print(f"| {r['workload']} | {r['unit']} | {f(r['gaze'])} | {f(r['pytorch'])} | {f(r['ratio'])} |")
PY
    done
} >>docs/optimization-log.md
echo "appended to docs/optimization-log.md" >&2
