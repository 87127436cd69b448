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
