#!/bin/bash
# GPU-machine entry for bench_deepspeed_gpu.py: unpack the carried packages, install DeepSpeed, run the benchmark.
# Layout it expects (what the device call carries): CARRY/wt = this repo, CARRY/site.tar.xz (benchmarks/pack_gpu_site.py),
# CARRY/deepspeed/*.whl + CARRY/install-deepspeed.sh (the shared DeepSpeed recipe). Run from CARRY/wt:
#   bash benchmarks/bench_deepspeed_gpu.sh [bench_deepspeed_gpu.py args]        (results go to $OUT)
set -uo pipefail
CARRY=${CARRY:-$(cd "$(dirname "$0")/../.." && pwd)}
SITE=/tmp/vmr-site
t0=$(date +%s)
mkdir -p "$SITE" && tar -xJf "$CARRY/site.tar.xz" -C "$SITE" || exit 1
export PYTHONPATH="$PWD:$SITE"
source "$CARRY/install-deepspeed.sh" || exit 1       # prepends its own site folder, sets TORCH_CUDA_ARCH_LIST=9.0
export CUDA_MODULE_LOADING=LAZY NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 TOKENIZERS_PARALLELISM=false \
       PYTHONUNBUFFERED=1
cat "$SITE/selective_scan_cuda.TRIMMED" 2>/dev/null
echo "installed in $(( $(date +%s) - t0 )) s"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv
python3 benchmarks/bench_deepspeed_gpu.py --out "${OUT:-/tmp/out}" --cpu-workers 16 "$@"
