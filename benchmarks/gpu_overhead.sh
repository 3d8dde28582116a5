#!/usr/bin/env bash
# The adapter's cost on one CUDA GPU, in a few minutes: benchmarks/overhead.py at WeatherDiff64 and
# CDiffuSE sizes in float32 and in bf16 autocast with the default (reduced) encoders, and in bf16 with
# the paper's full-resolution encoders. Each writes overhead.json (ratios with their spread, training
# samples per second with and without the adapter, the step's share of the matmul ceiling, peak CUDA
# memory) and overhead.png under OUTPUT_DIR/<run>/.
#
#     bash benchmarks/gpu_overhead.sh [OUTPUT_DIR] [BATCH_SIZE]      # defaults: outputs/benchmarks/gpu, 16
set -euo pipefail
cd "$(dirname "$0")/.."
output_dir="${1:-outputs/benchmarks/gpu}"
batch_size="${2:-16}"
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'error: no CUDA device')"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv || true
for run in "fp32 no reduced" "bf16 bf16 reduced" "bf16-paper bf16 paper"; do
    set -- $run
    echo "== $1: mixed precision $2, $3 encoders"
    python benchmarks/overhead.py --device cuda --batch_size "$batch_size" --mixed_precision "$2" --encoder "$3" \
        --output_dir "$output_dir/$1"
done
