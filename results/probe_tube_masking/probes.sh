#!/bin/bash
# 2026-12-07 (session 30), AMX VM; /tmp/snap0 = git worktree of the tube-masking commit; W = /tmp/mrfound_bench/phenotype
# probes of the two tube-masking checkpoints (mean of all tokens and per-sequence central pooling), fine-tuning
# with the per-sequence head, then paired comparisons with the stored probes of results/probe_more_unlabeled_853/
# and the stored fine-tuned runs of results/finetune_protocols/per_sequence_head_pretrain_seed_pair_{0,1}/
cd /tmp/snap0
export PYTHONPATH=/tmp/snap0 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
W=/tmp/mrfound_bench/phenotype
PY=/work/main/.venv/bin/python
R=/work/main/results/probe_more_unlabeled_853
F=/work/main/results/finetune_protocols
O=/work/main/results/probe_tube_masking
while ! grep -q PRETRAINED /tmp/s30/tube.log; do sleep 20; done
probe() {  # name core checkpoint extra...
  n=$1; c=$2; ck=$3; shift 3
  taskset -c $c $PY -m mrfound probe --checkpoint $ck --train-manifest $W/train.csv --test-manifest $W/test.csv \
    --cache-dir $W/cache --protocols full "$@" --out $O/$n > /tmp/s30/$n.log 2>&1
}
ft() {  # seed core
  taskset -c $2 $PY benchmarks/finetune_protocols.py --checkpoint tube=/tmp/s30/run_tube_seed$1/final \
    --train-manifest $W/train.csv --test-manifest $W/test.csv --cache-dir $W/cache --seeds 0 --threads 1 \
    --pooling centre_per_sequence --work /tmp/s30/ftp_work_s$1 --out /tmp/s30/ftp_s$1 > /tmp/s30/ftp_s$1.log 2>&1
  mkdir -p $O/finetuned_seed$1 && cp /tmp/s30/ftp_s$1/tube_seed0/* /tmp/s30/ftp_s$1/finetune_protocols.json $O/finetuned_seed$1/
}
for s in 0 1; do
  ( probe tube_seed${s}_mean $s /tmp/s30/run_tube_seed$s/final; probe tube_seed${s}_cps $s /tmp/s30/run_tube_seed$s/final --pooling centre_per_sequence; ft $s $s ) &
done
wait
cmp() { $PY benchmarks/compare_probes.py --a $1 --b $2 --out $O/compare_$3.json > /dev/null 2>&1; }
cmp $O/tube_seed0_mean $R/random_mean tube_seed0_vs_random_mean
cmp $O/tube_seed1_mean $R/random_mean tube_seed1_vs_random_mean
cmp $O/tube_seed0_cps $R/random_cps tube_seed0_vs_random_cps
cmp $O/tube_seed1_cps $R/random_cps tube_seed1_vs_random_cps
cmp $O/tube_seed0_mean $R/ours_mean tube_seed0_vs_ours_seed0_mean
cmp $O/tube_seed1_mean $R/ours_pretrain_seed1_mean tube_seed1_vs_ours_seed1_mean
cmp $O/tube_seed0_cps $R/ours_cps tube_seed0_vs_ours_seed0_cps
cmp $O/tube_seed1_cps $R/ours_pretrain_seed1_cps tube_seed1_vs_ours_seed1_cps
cmp $O/tube_seed0_mean $R/plain_mae_mean tube_seed0_vs_plain_mae_seed0_mean
cmp $O/tube_seed1_mean $R/plain_mae_pretrain_seed1_mean tube_seed1_vs_plain_mae_seed1_mean
cmp $O/tube_seed0_cps $R/plain_mae_cps tube_seed0_vs_plain_mae_seed0_cps
cmp $O/tube_seed1_cps $R/plain_mae_pretrain_seed1_cps tube_seed1_vs_plain_mae_seed1_cps
for s in 0 1; do
  cmp $O/finetuned_seed$s $F/per_sequence_head_pretrain_seed_pair_$s/ours_seed0 finetuned_tube_seed${s}_vs_ours_seed${s}
  cmp $O/finetuned_seed$s $F/per_sequence_head_pretrain_seed_pair_$s/plain_mae_seed0 finetuned_tube_seed${s}_vs_plain_mae_seed${s}
done
echo PROBED
# run afterwards (the option is newer than the run): the lines README's table is made of
$PY benchmarks/compare_probes.py --summarise $O/compare_*.json > $O/summary.txt
