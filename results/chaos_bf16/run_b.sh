#!/bin/bash
# CHAOS 6 mm + spatial (fixed placement) + bf16 autocast, every model: core $1, model $2, tag $3
cd /tmp/snap19
export PYTHONPATH=/tmp/snap19 OMP_NUM_THREADS=1
taskset -c $1 /work/main/.venv/bin/python benchmarks/chaos_segmentation.py --data /work/shared/data/chaos_t2 --work /tmp/s18/chaos_work --out /tmp/s19/R --minutes-per-fold ${MIN:-7} --phantom-predict-steps 0 --threads 1 --intensity-aug 0.8 --organ-aug 0.8 --spatial-aug 0.8 --mixed-precision bf16 --models $2 --feature-size 8 --tag $3 ${@:4} > /tmp/s19/$3.log 2>&1
