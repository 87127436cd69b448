#!/bin/bash
# 2026-12-07 (session 30), AMX VM; /tmp/snap0 = git worktree of the tube-masking commit; W = /tmp/mrfound_bench/phenotype
# tube masking (mae.mask_mode=tube), otherwise the 853-case seed-0/1 recipe of README (results/probe_more_unlabeled_853/)
cd /tmp/snap0
export PYTHONPATH=/tmp/snap0 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
W=/tmp/mrfound_bench/phenotype
for s in 0 1; do
  taskset -c $s /work/main/.venv/bin/python -m mrfound pretrain --manifest $W/pretrain_train_plus640.csv --model tiny \
    --roi-size 32 --spacing 2.0 --cache-dir $W/cache --batch-size 8 --lr 5e-4 --eval-fraction 0 \
    --set model_overrides.patch_size=8 --set mae.sequence_drop=0.5 --set preprocess.foreground=otsu \
    --set mae.mask_mode=tube \
    --steps 10000 --warmup-steps 200 --lesion-crops 0.5 --mixed-precision bf16 --seed $s \
    --out /tmp/s30/run_tube_seed$s > /tmp/s30/pretrain_seed$s.log 2>&1 &
done
wait
echo PRETRAINED
