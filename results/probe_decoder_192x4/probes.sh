#!/bin/bash
# 2026-12-07 (session 29), AMX VM; /tmp/snap0 = git worktree of commit 3ccd1fa; W = /tmp/mrfound_bench/phenotype
# probes of the two decoder-192x4 checkpoints (mean of all tokens and per-sequence central pooling) and a
# random-init probe (checks that the regenerated cohort gives README's 0.569), then paired comparisons
# with the stored probes of results/probe_more_unlabeled_853/
cd /tmp/snap0
export PYTHONPATH=/tmp/snap0 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
W=/tmp/mrfound_bench/phenotype
PY=/work/main/.venv/bin/python
R=/work/main/results/probe_more_unlabeled_853
O=/tmp/s29/probes
mkdir -p $O
while ! grep -q PRETRAINED /tmp/s29/deepdec.log; do sleep 20; done
probe() {  # name core checkpoint extra...
  n=$1; c=$2; ck=$3; shift 3
  taskset -c $c $PY -m mrfound probe --checkpoint $ck --train-manifest $W/train.csv --test-manifest $W/test.csv \
    --cache-dir $W/cache --protocols full "$@" --out $O/$n > $O/$n.log 2>&1
}
( probe dec_seed0_mean 0 /tmp/s29/run_dec192x4_seed0/final; probe dec_seed0_cps 0 /tmp/s29/run_dec192x4_seed0/final --pooling centre_per_sequence; probe random_mean 0 /tmp/s29/run_dec192x4_seed0/final --random-init ) &
( probe dec_seed1_mean 1 /tmp/s29/run_dec192x4_seed1/final; probe dec_seed1_cps 1 /tmp/s29/run_dec192x4_seed1/final --pooling centre_per_sequence ) &
wait
cmp() { $PY benchmarks/compare_probes.py --a $O/$1 --b $2 --out $O/compare_$3.json > /dev/null 2>&1; }
for s in 0 1; do
  cmp dec_seed${s}_mean $R/random_mean dec_seed${s}_vs_random_mean
  cmp dec_seed${s}_cps $R/random_cps dec_seed${s}_vs_random_cps
  cmp dec_seed${s}_mean $R/plain_mae_mean dec_seed${s}_vs_plain_mae_mean
  cmp dec_seed${s}_cps $R/plain_mae_cps dec_seed${s}_vs_plain_mae_cps
done
cmp dec_seed0_mean $R/ours_mean dec_seed0_vs_ours_seed0_mean
cmp dec_seed1_mean $R/ours_pretrain_seed1_mean dec_seed1_vs_ours_seed1_mean
cmp dec_seed0_cps $R/ours_cps dec_seed0_vs_ours_seed0_cps
cmp dec_seed1_cps $R/ours_pretrain_seed1_cps dec_seed1_vs_ours_seed1_cps
cmp dec_seed1_mean $R/plain_mae_pretrain_seed1_mean dec_seed1_vs_plain_mae_seed1_mean
cmp dec_seed1_cps $R/plain_mae_pretrain_seed1_cps dec_seed1_vs_plain_mae_seed1_cps
cmp random_mean $R/random_mean random_regenerated_vs_stored
echo PROBED
