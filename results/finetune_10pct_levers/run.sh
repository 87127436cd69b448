cd /tmp/snap16
export PYTHONPATH=/tmp/snap16 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
PY=/work/main/.venv/bin/python
W=/tmp/mrfound_bench/phenotype
for spec in "60 0" "150 0" "300 0" "300 100"; do
  set -- $spec; S=$1; H=$2; R=/tmp/s16/ft10/s${S}_h${H}
  [ -f $R/eval/metrics.json ] && continue
  $PY -m mrfound finetune --task classify --checkpoint /tmp/s12/run853/final --manifest $W/train.csv --val-fraction 0 \
    --labels-fraction 0.1 --cache-dir $W/cache --out $R/ft --steps $S --batch-size 8 --lr 5e-4 --warmup-steps $((S/10)) \
    --layer-decay 0.75 --sequence-dropout 0.25 --pooling centre_per_sequence --head-only-steps $H --seed 0
  $PY -m mrfound predict --checkpoint $R/ft/final --manifest $W/test.csv --out $R/pred
  $PY -m mrfound evaluate --predictions $R/pred/predictions.csv --manifest $W/test.csv --out $R/eval
  $PY -c "import json;d=json.load(open('$R/eval/metrics.json'));print('RESULT $S $H', json.dumps(d.get('auc_macro', d)) [:300])"
done
