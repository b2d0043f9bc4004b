# int: main + mem + w4l + gelub: W7 cold first step, steps, memory of one replayed step, one profiled step
D=$OUT/int; mkdir -p $D
timeout 170 python3 .gpu/w7prof.py > $D/w7prof.log 2>&1; echo "w7prof rc=$?"; grep -E "first step|^step|kernel time|captured|memory" $D/w7prof.log
