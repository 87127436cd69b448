"""One-off exploration (2026-12-05): a probe trained on the training cases under *every* protocol (absent
sequences imputed by the model's decoder, per-sequence central pooling), tested under each protocol.

Run from a snapshot of commit 2d106b4 (PYTHONPATH=snapshot, OMP_NUM_THREADS=1), W = the phenotype work folder:
``python augmented_probe.py ours RUN853/final FEATURE_CACHE OUT`` and the same with the plain-MAE checkpoint;
then ``benchmarks/compare_probes.py``. The feature cache entries are those of ``mrfound probe --absent impute
--pooling centre_per_sequence``. Writes OUT/predictions.csv and prints the named protocols' macro AUC.
"""
import sys
from pathlib import Path

import pandas as pd
import torch

from mrfound.data.guard import checked_manifest
from mrfound.data.sequences import DEFAULT_VOCABULARY as V
from mrfound.finetune.common import load_encoder
from mrfound.finetune.probe import (
    attach_case_info,
    encoder_feature_fn,
    extract_protocol_features,
    resolve_protocols,
    run_probe,
)

name, ckpt, fc, out = sys.argv[1:5]
random_init = len(sys.argv) > 5
W = "/tmp/mrfound_bench/phenotype"
torch.set_num_threads(1)
train = checked_manifest(f"{W}/train.csv", on_error="raise", vocabulary=V)
test = checked_manifest(f"{W}/test.csv", on_error="raise", vocabulary=V)
src = load_encoder(ckpt, random_init=random_init, seed=0, with_decoder=True)
fn = encoder_feature_fn(src.encoder, src.preprocess, cache_dir=f"{W}/cache", pooling="centre_per_sequence",
                        completer=src.completer)
key = f"{src.key}-pooling-centre_per_sequence-absent-impute"
protos = resolve_protocols("full", V.sequences)
kw = {"model_key": key, "cache_dir": fc, "sequences": V.sequences}
tr_tables, _ = extract_protocol_features(train, fn, protos, **kw)
tr = attach_case_info(tr_tables, train)
aug = pd.concat([t.assign(case=t["case"] + "@" + p) for p, t in tr.items()], ignore_index=True)
te_tables, excluded = extract_protocol_features(test, fn, protos, **kw)
ev = attach_case_info(te_tables, test)
res = run_probe(aug, ev, classes=V.classes, malignant=V.malignant, cross_validate=False, seed=0, n_boot=1000,
                excluded=excluded)
Path(out).mkdir(parents=True, exist_ok=True)
res.predictions.to_csv(Path(out) / "predictions.csv", index=False)
for p in ("all", "no_contrast", "t2_only", "contrast_only"):
    print(name, p, round(res.metrics[p]["auc_macro"]["value"], 3), flush=True)
