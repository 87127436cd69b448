#!/bin/bash
# 2026-12-07 (session 30), AMX VM; /tmp/snap0 = git worktree of 13e5e75; W = /tmp/mrfound_bench/phenotype
# the 853-case recipe of README (results/probe_more_unlabeled_853/) for 20000 steps instead of 10000, pretraining
# seed 1, data-parallel on the 2 cores (2 processes x batch 4 = the recipe's batch 8), then the two probes
cd /tmp/snap0
export PYTHONPATH=/tmp/snap0 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 ACCELERATE_USE_CPU=1
W=/tmp/mrfound_bench/phenotype
PY=/work/main/.venv/bin/python
/work/main/.venv/bin/accelerate launch --multi_gpu --num_processes 2 -m mrfound.pretrain \
  --manifest $W/pretrain_train_plus640.csv --model tiny --roi-size 32 --spacing 2.0 --cache-dir $W/cache \
  --batch-size 4 --lr 5e-4 --eval-fraction 0 --set model_overrides.patch_size=8 --set mae.sequence_drop=0.5 \
  --set preprocess.foreground=otsu --steps 20000 --warmup-steps 200 --lesion-crops 0.5 --mixed-precision bf16 \
  --seed 1 --out /tmp/s30/run20k_seed1 > /tmp/s30/run20k.log 2>&1
echo PRETRAINED
O=/work/main/results/probe_20k_steps
R=/work/main/results/probe_more_unlabeled_853
probe() {  # name core extra...
  n=$1; c=$2; shift 2
  taskset -c $c $PY -m mrfound probe --checkpoint /tmp/s30/run20k_seed1/final --train-manifest $W/train.csv \
    --test-manifest $W/test.csv --cache-dir $W/cache --protocols full "$@" --out $O/$n > /tmp/s30/$n.log 2>&1
}
probe run20k_seed1_mean 0 &
probe run20k_seed1_cps 1 --pooling centre_per_sequence &
wait
cmp() { $PY benchmarks/compare_probes.py --a $O/$1 --b $2 --out $O/compare_$3.json > /dev/null 2>&1; }
cmp run20k_seed1_mean $R/random_mean run20k_seed1_vs_random_mean
cmp run20k_seed1_cps $R/random_cps run20k_seed1_vs_random_cps
cmp run20k_seed1_mean $R/ours_pretrain_seed1_mean run20k_seed1_vs_ours10k_seed1_mean
cmp run20k_seed1_cps $R/ours_pretrain_seed1_cps run20k_seed1_vs_ours10k_seed1_cps
cmp run20k_seed1_mean $R/plain_mae_pretrain_seed1_mean run20k_seed1_vs_plain_mae_seed1_mean
cmp run20k_seed1_cps $R/plain_mae_pretrain_seed1_cps run20k_seed1_vs_plain_mae_seed1_cps
echo PROBED
