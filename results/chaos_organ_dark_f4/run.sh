#!/bin/bash
# CHAOS 4 mm, bf16, aug 0.8, CPU-time budget: core $1, model $2, tag $3, rest: extra args
cd /tmp/snap22  # a snapshot of commit 9711678
export PYTHONPATH=/tmp/snap22 OMP_NUM_THREADS=1
taskset -c $1 /work/main/.venv/bin/python benchmarks/chaos_segmentation.py --data /work/shared/data/chaos_t2 --work /tmp/s20/chaos_work --out /tmp/s22/R2 --minutes-per-fold ${MIN:-14} --phantom-predict-steps 0 --threads 1 --intensity-aug 0.8 --organ-aug 0.8 --spatial-aug 0.8 --mixed-precision bf16 --models $2 --feature-size 8 --budget-clock cpu --overlap auto --tag $3 ${@:4} > /tmp/s22/$3.log 2>&1
