"""The demo's segmentation checkpoint on its 2 test volumes: Dice at overlap 0.25 and at the new default.

Usage: ``.venv/bin/python results/demo_overlap/check.py DEMO_OUT`` (after ``make demo``); prints one JSON
line (``demo_overlap.json``: 2026-12-06, the fresh-clone demo of commit 176551b on the AMD EPYC VM).
"""

import json
import sys

import numpy as np

from mrfound.data.dataset import MRDataset
from mrfound.data.manifest import read_manifest
from mrfound.data.preprocess import PreprocessConfig
from mrfound.demo import subset_manifest
from mrfound.finetune.metrics import segmentation_metrics
from mrfound.finetune.segment import segmentation_volume
from mrfound.inference import default_overlap, keep_largest_foreground
from mrfound.models.checkpoint import load_model
from mrfound.models.heads import remap_mask

out = sys.argv[1]
model, cfg = load_model(f"{out}/work/segment/final")
model.eval()
pp = PreprocessConfig.from_dict(cfg["preprocessing"])
test = read_manifest(f"{out}/work/test.csv")
eval_m = subset_manifest(test, lambda c: c.mask is not None)  # the demo's evaluation cases
eval_m = type(eval_m).from_cases(eval_m.cases[:2], eval_m.root, eval_m.vocabulary)
ds = MRDataset(eval_m, pp, mode="full", cache_dir=f"{out}/work/cache")
auto = default_overlap(min(model.roi_size), model.encoder.config.patch_size)
res = {}
for ov in (0.25, auto):
    rows = []
    for i in range(len(ds)):
        s = ds[i]
        labels = keep_largest_foreground(segmentation_volume(model, s, overlap=ov, sw_batch_size=4))
        m = segmentation_metrics(labels, remap_mask(s["mask"])[0].numpy(), spacing=pp.spacing)
        rows.append({"case": s["case"], "liver": m["liver"]["dice"], "lesion": m["lesion"]["dice"]})
    res[f"{ov:.3f}"] = {
        "cases": rows,
        "liver": float(np.mean([r["liver"] for r in rows])),
        "lesion": float(np.mean([r["lesion"] for r in rows])),
    }
print(json.dumps(res))
