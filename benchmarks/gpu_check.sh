#!/usr/bin/env bash
# Prior-aligned LoRA training at Qwen2.5-VL-3B scale (random weights, no download) on one GPU.
# Prints progress, then one JSON line (last line). Must finish in under 8 minutes on one H200.
#   bash benchmarks/gpu_check.sh            # real check
#   bash benchmarks/gpu_check.sh --tiny --image-size 448x252 --batch-size 2   # CPU smoke test
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONPATH="${PWD}${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || echo "no nvidia-smi (CPU run)"
exec timeout 470 "$PYTHON" benchmarks/gpu_check.py "$@"
