# int: main + mem + w4l + gelub + bf16c + tce + tf32 + attnf: W7 f32 cold first step, steps, memory of one replayed
# step, one profiled step; then W4 (SGD, Adam)
D=$OUT/int; mkdir -p $D
timeout 165 python3 .gpu/w7prof.py > $D/w7prof.log 2>&1; echo "w7prof rc=$?"; grep -E "first step|^step|kernel time|captured|memory" $D/w7prof.log
timeout 45 python3 bench/train_step.py --only zyx --train-steps 40 > $D/w4.log 2>&1; echo "w4 rc=$?"; grep -v "Warn\|lambda" $D/w4.log | tail -12
