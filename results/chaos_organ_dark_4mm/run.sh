#!/bin/bash
# CHAOS 4 mm, bf16, aug 0.8, CPU-time budget, --organ-dark 0.1 0.2: core $1, model $2, tag $3, rest: extra args
cd /tmp/snap23  # a snapshot of commit d131e0e
export PYTHONPATH=/tmp/snap23 OMP_NUM_THREADS=1
taskset -c $1 /work/main/.venv/bin/python benchmarks/chaos_segmentation.py --data /work/shared/data/chaos_t2 --work /tmp/s20/chaos_work --out /tmp/s23/R --minutes-per-fold ${MIN:-14} --phantom-predict-steps 0 --threads 1 --intensity-aug 0.8 --organ-aug 0.8 --spatial-aug 0.8 --mixed-precision bf16 --models $2 --feature-size 8 --budget-clock cpu --overlap auto --organ-dark 0.1 0.2 --tag $3 ${@:4} > /tmp/s23/$3.log 2>&1
