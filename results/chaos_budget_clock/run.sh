#!/bin/bash
# --budget-clock check: UNet, fold 4, 3 min. core 0: wall clock alone, then wall clock sharing its core with
# a busy loop; core 1: CPU clock sharing its core with a busy loop the whole time.
cd /tmp/snap21b  # a snapshot of commit c99e0ba
export PYTHONPATH=/tmp/snap21b OMP_NUM_THREADS=1
B="/work/main/.venv/bin/python benchmarks/chaos_segmentation.py --data /work/shared/data/chaos_t2 --work /tmp/s20/chaos_work --out /tmp/s21/Rclock --minutes-per-fold 3 --phantom-predict-steps 0 --threads 1 --intensity-aug 0.8 --organ-aug 0.8 --spatial-aug 0.8 --mixed-precision bf16 --models unet --only-fold 4"
setsid taskset -c 1 python3 -c "while True: pass" & L1=$!
taskset -c 1 $B --budget-clock cpu --tag cpu_shared > /tmp/s21/clock_cpu_shared.log 2>&1 &
C1=$!
taskset -c 0 $B --tag wall_alone > /tmp/s21/clock_wall_alone.log 2>&1
setsid taskset -c 0 python3 -c "while True: pass" & L0=$!
taskset -c 0 $B --tag wall_shared > /tmp/s21/clock_wall_shared.log 2>&1
kill $L0
wait $C1
kill $L1
echo done > /tmp/s21/clock.done
