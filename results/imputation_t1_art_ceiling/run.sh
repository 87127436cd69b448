#!/bin/bash
# The commands behind this folder's JSON (2026-12-07, the AMD EPYC VM, one core each). W = the work folder
# of the 240-case imputation benchmark (benchmarks/imputation.py --budget full --cases 240 ... --work W),
# RUN = its per-voxel-features pretraining run (source_features 16, 5000 steps).
W=${W:-/tmp/s25/impF240/full}
RUN=${RUN:-pretrain_phantom_240_n5000_s4_r32_6617cc}
DIAG=results/imputation_source_count/art_diag_features16_240cases/cases_test.json
export OMP_NUM_THREADS=1
for m in all noise_shift noise; do  # 3-4 min each
  python results/imputation_t1_art_ceiling/ceiling.py "$W" --run "$RUN" --mode $m --k 8 --diag $DIAG \
    --out results/imputation_t1_art_ceiling/ceiling_$m.json
done
python results/imputation_t1_art_ceiling/smooth_blend.py "$W" --run "$RUN" \
  --out results/imputation_t1_art_ceiling/smooth_blend_features16_240cases.json  # 3-6 min
