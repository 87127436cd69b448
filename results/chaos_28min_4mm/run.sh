#!/bin/bash
# CHAOS 4 mm, bf16, aug 0.8, --organ-dark 0.1 0.2, 28 CPU-min per fold, one process per fold (so finished
# folds survive an interruption): core $1, model $2, tag prefix $3; folds run 0..4 in turn on that core.
cd /tmp/snap24  # a snapshot of commit a2d5920
export PYTHONPATH=/tmp/snap24 OMP_NUM_THREADS=1
for k in ${FOLDS:-0 1 2 3 4}; do
  taskset -c $1 /work/main/.venv/bin/python benchmarks/chaos_segmentation.py --data /work/shared/data/chaos_t2 \
    --work /tmp/s20/chaos_work --out /tmp/s24/R --minutes-per-fold 28 --phantom-predict-steps 0 --threads 1 \
    --intensity-aug 0.8 --organ-aug 0.8 --spatial-aug 0.8 --mixed-precision bf16 --models $2 --feature-size 8 \
    --budget-clock cpu --overlap auto --organ-dark 0.1 0.2 --only-fold $k --tag $3_f$k ${@:4} > /tmp/s24/$3_f$k.log 2>&1
done
