#!/bin/bash
# CHAOS 4 mm, bf16, aug 0.8: core $1, model $2, tag $3, rest: extra args
cd /tmp/snap21  # a snapshot of commit a9fbdba
export PYTHONPATH=/tmp/snap21 OMP_NUM_THREADS=1
taskset -c $1 /work/main/.venv/bin/python benchmarks/chaos_segmentation.py --data /work/shared/data/chaos_t2 --work /tmp/s20/chaos_work --out /tmp/s21/R --minutes-per-fold ${MIN:-14} --phantom-predict-steps 0 --threads 1 --intensity-aug 0.8 --organ-aug 0.8 --spatial-aug 0.8 --mixed-precision bf16 --models $2 --feature-size 8 --tag $3 ${@:4} > /tmp/s21/$3.log 2>&1
