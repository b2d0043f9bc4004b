# wgmma probe (phase 1): sm_90a warpgroup MMA through NVIDIA OpenCL inline PTX. <= 4 minutes (timeouts sum to 237 s).
# Output: stdout and $OUT/wgmma/{emulate,layout,gemm}.txt, plus every kernel's .cl and patched .ptx.
# Each layout N and each gemm config runs in its own process: a faulting wgmma can kill the OpenCL context.
source .gpu/setup.sh
D="$OUT/wgmma"; mkdir -p "$D"
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,driver_version --format=csv,noheader > "$D/gpu.txt" 2>&1; cat "$D/gpu.txt"
git log --oneline -1 > "$D/commit.txt" 2>&1
P="$(dirname "$0")/wgmma_probe.py"   # the probe next to this script
echo "=== emulate (host index math)"
timeout 10 python3 $P emulate "$D" 2>&1 | tail -5
echo "=== layout (one warpgroup, 64xNxK vs numpy; exact small-integer data, PASS needs max err 0)"
for run in "64" "128" "256" "64 alt" "128 alt" "256 alt"; do   # alt: swapped LBO/SBO encodings, may fault, so last
  timeout 12 python3 $P layout "$D" $run 2>&1 | grep -v Warn | cut -c1-400 | tee -a "$D/layout.stdout" \
    | sed '/^=== layout summary/,$d' | grep -v '^    wrong\|^    [.#+]*$\|^    thread\|^    output rows' | tail -70
done
echo "=== layout: PASS/FAIL count per variant over N in 64,128,256 x K in 16,128 (6 = all; failure maps in $D/layout.txt)"
grep -h "^\(PASS\|FAIL\) n=.*: max err" "$D/layout.txt" | sed 's/: max err.*//; s/ n= *[0-9]* k= *[0-9]*//' | sort | uniq -c
echo "=== gemm (C = A.B^T bf16 -> f32 out, 20 launches one wait; torch bf16 A@B.T for comparison)"
timeout 35 python3 $P gemm "$D" 0 torch 2>&1 | grep -v Warn | cut -c1-600 | tee -a "$D/gemm.stdout"
for c in 1 2 3 4 5 6 7 8; do   # 7, 8: a producer warpgroup and named barriers (a deadlock ends at the timeout)
  timeout 15 python3 $P gemm "$D" $c 2>&1 | grep -v Warn | cut -c1-600 | tee -a "$D/gemm.stdout"
done
echo "=== done"
