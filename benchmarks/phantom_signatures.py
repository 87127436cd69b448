"""Does the phantom need several sequences to tell the classes apart?

Simulates a cohort with ``mrfound.data.phantom.generate_cohort`` (default 240 cases, seed 7, all
built-in centres), measures hand-crafted lesion statistics per sequence from the written NIfTI files and
masks only (``mrfound.data.phantom.measure``: lesion/liver median, mean, sd, 10th/90th percentiles, rim,
centre, rim/centre, perilesional halo), and trains a logistic regression with subject-grouped
stratified 5-fold cross-validation (``StratifiedGroupKFold``). Prints JSON with the macro one-vs-rest
AUC of

* all sequences (missing ones imputed) on every labelled case;
* each single sequence, on the cases that have it, next to all sequences on exactly those cases;
* the centre alone (the referral-mix confound: centres see different class mixes).

Usage::

    python benchmarks/phantom_signatures.py [--cases 240] [--seed 7] [--workers 2] [--out DIR]
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shlex
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from mrfound.data.phantom import PhantomConfig, generate_cohort
from mrfound.data.phantom.measure import STAT_NAMES, lesion_statistics, load_case_images
from mrfound.data.sequences import CLASSES, SEQUENCES
from mrfound.utils.machine import machine_info

LOG_STATS = {"ratio", "mean", "p10", "p90", "rim", "centre", "rim_centre", "halo"}


def case_features(args: tuple[dict, str]) -> dict[str, float]:
    """Feature vector of one manifest row: ``<seq>_<stat>``, NaN where the sequence is missing."""
    row, root = args
    images, mask, aff = load_case_images(row, root, SEQUENCES)
    stats = lesion_statistics(images, mask, aff)
    feats: dict[str, float] = {}
    for s in SEQUENCES:
        for k in STAT_NAMES:
            v = stats.get(s, {}).get(k, float("nan"))
            if k in LOG_STATS:
                v = math.log(max(v, 1e-3)) if np.isfinite(v) else float("nan")
            feats[f"{s}_{k}"] = v
    return feats


def cv_macro_auc(X: np.ndarray, y: np.ndarray, groups: np.ndarray, seed: int = 0, folds: int = 5) -> float:
    """Macro one-vs-rest AUC of out-of-fold logistic-regression probabilities (subject-grouped folds)."""
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedGroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    classes = np.unique(y)
    proba = np.zeros((len(y), len(classes)))
    cv = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    for tr, te in cv.split(X, y, groups):
        model = make_pipeline(SimpleImputer(strategy="median", keep_empty_features=True), StandardScaler(),
                              LogisticRegression(C=0.5, max_iter=3000))
        model.fit(X[tr], y[tr])
        p = model.predict_proba(X[te])
        cols = np.searchsorted(classes, model.classes_)
        proba[np.ix_(te, cols)] = p
    return float(roc_auc_score(y, proba, multi_class="ovr", average="macro", labels=classes))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=240)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--workers", type=int, default=None, help="processes (default: available CPUs, max 8)")
    ap.add_argument("--out", help="keep the cohort in this folder (default: a temporary folder)")
    ap.add_argument("--variation", type=float, default=1.0, help="phantom per-case variation multiplier")
    ap.add_argument("--features", help="also write the feature table (CSV) here")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    config = PhantomConfig(variation=args.variation)
    with tempfile.TemporaryDirectory(prefix="phantom_bench_") as tmp:
        out = Path(args.out) if args.out else Path(tmp) / "cohort"
        manifest = generate_cohort(out, args.cases, args.seed, config, workers=args.workers, progress=False)
        t_gen = time.perf_counter() - t0
        with open(manifest, newline="") as f:
            rows = [r for r in csv.DictReader(f) if r["label"]]
        workers = args.workers or min(len(os.sched_getaffinity(0)), 8)
        with ProcessPoolExecutor(max_workers=workers) as ex:
            feats = list(ex.map(case_features, [(r, str(manifest.parent)) for r in rows], chunksize=4))
    names = list(feats[0])
    X = np.array([[f[n] for n in names] for f in feats], dtype=float)
    y = np.array([CLASSES.index(r["label"]) for r in rows])
    groups = np.array([r["subject"] for r in rows])
    centers = np.array([r["center"] for r in rows])
    if args.features:
        with open(args.features, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["case", "subject", "center", "label", *names])
            for r, x in zip(rows, X):
                w.writerow([r["case"], r["subject"], r["center"], r["label"], *x])

    result: dict = {"benchmark": "phantom_signatures",
                    "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
                    "machine": machine_info(),
                    "cases": int(args.cases), "labelled": int(len(rows)), "seed": args.seed,
                    "variation": args.variation,
                    "classifier": "StandardScaler + LogisticRegression(C=0.5) on per-sequence lesion/liver "
                                  "statistics; StratifiedGroupKFold(5) by subject; macro one-vs-rest AUC"}
    result["auc_all_sequences"] = round(cv_macro_auc(X, y, groups), 4)
    single = {}
    for s in SEQUENCES:
        cols = [i for i, n in enumerate(names) if n.startswith(f"{s}_")]
        have = np.isfinite(X[:, cols[0]])
        if have.sum() < 40 or len(np.unique(y[have])) < len(CLASSES):
            continue
        single[s] = {"n": int(have.sum()),
                     "auc": round(cv_macro_auc(X[have][:, cols], y[have], groups[have]), 4),
                     "auc_all_sequences_same_cases": round(cv_macro_auc(X[have], y[have], groups[have]), 4)}
    result["single_sequence"] = single
    best = max(single, key=lambda s: single[s]["auc"])
    result["best_single"] = {"sequence": best, **single[best]}
    result["margin_all_vs_best_single_same_cases"] = round(
        single[best]["auc_all_sequences_same_cases"] - single[best]["auc"], 4)
    onehot = (centers[:, None] == np.unique(centers)[None, :]).astype(float)
    result["auc_centre_only"] = round(cv_macro_auc(onehot, y, groups), 4)
    result["class_counts"] = {c: int((y == i).sum()) for i, c in enumerate(CLASSES)}
    result["seconds"] = {"generate": round(t_gen, 1), "total": round(time.perf_counter() - t0, 1)}
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
