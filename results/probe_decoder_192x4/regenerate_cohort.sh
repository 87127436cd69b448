#!/bin/bash
# 2026-12-07 (session 29), AMX VM; /tmp/snap0 = git worktree of commit 3ccd1fa; W = /tmp/mrfound_bench/phenotype
# regenerate the full-budget phenotype cohort, split and cache, then the 640 extra unlabeled cases
set -x
cd /tmp/snap0
export PYTHONPATH=/tmp/snap0 OMP_NUM_THREADS=1
PY=/work/main/.venv/bin/python
W=/tmp/mrfound_bench/phenotype
$PY benchmarks/phenotype.py --budget full --threads 1 --workers 2 --work $W --out /tmp/s29/bench_out > /tmp/s29/gen_bench.log 2>&1 &
BP=$!
# stop once the pretraining starts (the cohort, split and cache are made before it)
while kill -0 $BP 2>/dev/null; do
  if ls -d $W/pretrain_* >/dev/null 2>&1; then sleep 5; kill $BP; break; fi
  sleep 10
done
date
/work/main/.venv/bin/mrfound phantom --out $W/extra_640 --cases 640 --seed 101 --centers uni_3t,community_15t,oncology,surveillance --unlabeled-fraction 1.0 --balanced --spacing-scale 1.5 --workers 2 > /tmp/s29/gen_extra.log 2>&1
cd $W && $PY /tmp/snap0/results/probe_more_unlabeled_853/make_pool_manifest.py
/work/main/.venv/bin/mrfound preprocess --manifest $W/pretrain_train_plus640.csv --out $W/cache --workers 2 --spacing 2.0 --foreground otsu > /tmp/s29/gen_pre.log 2>&1
date
echo DONE
