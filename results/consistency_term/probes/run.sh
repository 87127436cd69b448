cd /tmp/snap17c
export PYTHONPATH=/tmp/snap17c OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
W=/tmp/mrfound_bench/phenotype
PY=/work/main/.venv/bin/python
for m in cons001=/tmp/s17/run853_cons001/final ours=/tmp/s12/run853/final plain=/tmp/s12/run853_plain/final; do
  n=${m%%=*}; c=${m#*=}
  $PY -m mrfound probe --checkpoint $c --train-manifest $W/train.csv --test-manifest $W/test.csv --cache-dir $W/cache \
    --protocols full --out /tmp/s17/probe_$n > /tmp/s17/probe_$n.log 2>&1
done
for b in ours plain; do
  $PY benchmarks/compare_probes.py --a /tmp/s17/probe_cons001 --b /tmp/s17/probe_$b --out /tmp/s17/compare_cons001_vs_$b.json > /dev/null 2>&1
done
echo done > /tmp/s17/probes.done

# 2026-12-06 (session 18, snapshot of commit 746abc9): the same checkpoint with per-sequence central pooling
# and with the absent sequences synthesised by its decoder (jobA.sh), each compared with the plain-MAE and
# random-init probes of the same setting in results/probe_more_unlabeled_853/
cd /tmp/snap18a
R=/work/main/results/probe_more_unlabeled_853
C=/tmp/s17/run853_cons001/final
for cfg in "imp_cps:--pooling centre_per_sequence --absent impute" "imp_mean:--absent impute" "cps:--pooling centre_per_sequence"; do
  n=${cfg%%:*}; a=${cfg#*:}
  $PY -m mrfound probe --checkpoint $C --train-manifest $W/train.csv --test-manifest $W/test.csv --cache-dir $W/cache \
    --protocols full --folds 5 --seed 0 --n-boot 1000 --batch-size 8 $a --out /tmp/s18/probe_cons001_$n
  $PY benchmarks/compare_probes.py --a /tmp/s18/probe_cons001_$n --b $R/plain_mae_$n --out /tmp/s18/compare_cons001_vs_plain_$n.json
  $PY benchmarks/compare_probes.py --a /tmp/s18/probe_cons001_$n --b $R/random_$n --out /tmp/s18/compare_cons001_vs_random_$n.json
done
