# The GPU measurements of BENCHMARKS.md 9-9e in one device call (10 minutes at most), results under $OUT.
#
# On the CPU box: python benchmarks/pack_gpu_site.py --out .device16/site.tar.xz WHEEL...  (mamba-ssm, PyAV, ...), then
# a device call carrying .device16 runs `bash benchmarks/gpu_issue15.sh [STEP...]`. Steps, in order of value:
#   lanes    bench_scan_gpu.py --ab-lanes at 8 and 64 frames: the single pass's (prefetch, unroll) settings against
#            each other; each shape's fastest goes to blocks_<F>f.json, which the encoder step then loads
#   gemm     bench_proj_gemm_gpu.py at 8 and 64 frames: the mixer's projections in the model's and other layouts
#   tests    pytest -m cuda on the kernel, model and graph tests (~4 min: compiling the unrolled lanes variants
#            takes ~20 s each; TESTS_K=EXPR selects some, TESTS_TIMEOUT=S limits them)
#   encoder  bench_gpu_encoder.py at 8 and 64 frames (ENCODER_FRAMES=64: one): triton, triton_graphs
#            (ENCODER_VARIANTS=... others, e.g. cuda,triton for the mamba-ssm path), the SDPA ViT (with and without
#            the patch GEMM), profiles
#   scan     bench_scan_gpu.py at the shape against mamba-ssm, with the roofline
#   conv     bench_biconv_gpu.py's block sweep
#   boundary the two shipped lanes settings against each other at 64 frames and batch 8-32 (46.5-186
#            channel-directions per SM; the rule switches at 60, BENCHMARKS 9g; BOUNDARY_BATCHES="..." picks others)
# Each step has its own time limit and is tarred into $OUT/results.tar as soon as it ends, so a call cut short
# still brings back what finished.
set -u
export PYTHONUNBUFFERED=1 CUDA_MODULE_LOADING=LAZY
SITE=/tmp/vmr-site
[ -d $SITE ] || { mkdir -p $SITE && tar -xJf .device16/site.tar.xz -C $SITE; }
export PYTHONPATH=$PWD:$SITE
keep() { (cd "$OUT" && tar rf results.tar "$@" && rm -f "$@"); }
log() { echo "$1 $(date +%T)" >> "$OUT/steps.txt"; }
nvidia-smi --query-gpu=name,clocks.max.sm,driver_version --format=csv > "$OUT/steps.txt"
# the lanes step's settings, PREFETCH,UNROLL[,STATES] (states per lane: TUNING's unless given)
LANES_AB_8=${LANES_AB_8:-"2,1 1,1 1,2 1,1,4 1,2,4 2,1,4 2,2,4"}
LANES_AB_64=${LANES_AB_64:-"3,3 2,2 2,3 3,2"}
steps=("$@"); [ ${#steps[@]} -gt 0 ] || steps=(tests encoder scan)
for step in "${steps[@]}"; do
  log "start $step"
  case $step in
    tests)
      timeout ${TESTS_TIMEOUT:-280} python -m pytest -q -m cuda tests/test_kernels.py tests/test_cuda_model.py \
        tests/test_cuda_graphs.py ${TESTS_K:+-k "$TESTS_K"} -p no:cacheprovider -rA --durations=15 \
        > "$OUT/cuda_tests.log" 2>&1
      tail -25 "$OUT/cuda_tests.log"; keep cuda_tests.log ;;
    lanes)
      for f in 8 64; do
        shape="--batch 64 --seqlen 1569"; ab=$LANES_AB_8
        [ $f = 64 ] && { shape="--batch 8 --seqlen 12545"; ab=$LANES_AB_64; }
        for setting in $ab; do  # compile each setting in its own process first (Triton's disk cache is shared)
          timeout 150 python benchmarks/bench_scan_gpu.py $shape --ab-lanes $setting --compile-only > /dev/null 2>&1 &
        done; wait
        timeout 240 python benchmarks/bench_scan_gpu.py $shape --ab-lanes $ab --save-blocks /tmp/blocks_${f}f.json \
          --json "$OUT/lanes_${f}f.json" > "$OUT/lanes_${f}f.log" 2>&1
        grep "fwd_lanes_prefetch\|forward" "$OUT/lanes_${f}f.log"; cp /tmp/blocks_${f}f.json "$OUT/"
        keep "lanes_${f}f.json" "lanes_${f}f.log" "blocks_${f}f.json"
      done ;;
    encoder)
      for f in ${ENCODER_FRAMES:-8 64}; do
        blocks=(); [ -f /tmp/blocks_${f}f.json ] && blocks=(--load-blocks /tmp/blocks_${f}f.json)
        timeout 120 python benchmarks/bench_gpu_encoder.py --frames $f --no-materialised \
          --variants ${ENCODER_VARIANTS:-triton,triton_graphs} --profile $f "${blocks[@]}" \
          --json "$OUT/encoder_${f}f.json" > "$OUT/encoder_${f}f.log" 2>&1
        grep "^T=" "$OUT/encoder_${f}f.log"; keep "encoder_${f}f.json" "encoder_${f}f.log"
      done ;;
    gemm)
      for f in 8 64; do
        if [ $f = 8 ]; then b=64; else b=8; fi
        timeout 60 python benchmarks/bench_proj_gemm_gpu.py --frames $f --batch $b --json "$OUT/gemm_${f}f.json" \
          > "$OUT/gemm_${f}f.log" 2>&1
        tail -9 "$OUT/gemm_${f}f.log"; keep "gemm_${f}f.json" "gemm_${f}f.log"
      done ;;
    scan)
      timeout ${SCAN_TIMEOUT:-240} python benchmarks/bench_scan_gpu.py --json "$OUT/scan.json" > "$OUT/scan.log" 2>&1
      tail -8 "$OUT/scan.log"; keep scan.json scan.log ;;
    conv)
      timeout 150 python benchmarks/bench_biconv_gpu.py --json "$OUT/biconv.json" > "$OUT/biconv.log" 2>&1
      tail -6 "$OUT/biconv.log"; keep biconv.json biconv.log ;;
    boundary)
      for b in ${BOUNDARY_BATCHES:-8 12 16 20 24 32}; do  # the first compiles both settings (~40 s); the rest reuse the cache
        timeout 90 python benchmarks/bench_scan_gpu.py --batch $b --seqlen 12545 --ab-lanes 2,3,2 2,2,4 \
          --no-compare --json "$OUT/boundary_b$b.json" > "$OUT/boundary_b$b.log" 2>&1
        echo "batch $b"; grep "fwd_ms" "$OUT/boundary_b$b.log" | cut -c1-120
        keep "boundary_b$b.json" "boundary_b$b.log"
      done ;;
    *) echo "unknown step $step (lanes, gemm, tests, encoder, scan, conv, boundary)" ;;
  esac
  log "end $step"
done
cat "$OUT/steps.txt"
