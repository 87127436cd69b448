"""Does mrfound's t1_art synthesis carry noise it could shed? Post-hoc smoothing and shrinkage, chosen on
training cases, scored on held-out ones.

For each case (training cases that have the target, then the held-out ones) it synthesises the target
with a pretraining run of ``benchmarks/imputation.py`` and the benchmark's mean image (its
``case_predictions``), then scores in the liver (the benchmark's region):

- ``smooth_<s>``: the synthesis after a Gaussian filter of ``s`` voxels (0 = as synthesised);
- ``blend_<s>_<a>``: ``a`` x that smoothed synthesis + (1 - ``a``) x the mean image;
- ``lowpass_<L>_<a>``: ``a`` x the synthesis + (1 - ``a``) x the synthesis after a Gaussian filter of ``L``
  voxels (shrinkage toward its own local mean, no mean image involved).

The setting with the best mean PSNR on the training cases is then read on the held-out cases, so
nothing is tuned on them. Writes one JSON (``--out``) and prints the summary.

Usage::

    python results/imputation_t1_art_ceiling/smooth_blend.py WORK/full --run RUN [--target t1_art]
        [--cases 240] [--n-train 48] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.ndimage import gaussian_filter

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

import imputation as im  # noqa: E402

from mrfound import load_pretrained  # noqa: E402
from mrfound.data.preprocess import preprocess_case  # noqa: E402
from mrfound.data.sequences import SEQUENCES  # noqa: E402

SIGMAS = (0.0, 0.5, 0.75, 1.0, 1.5)
LOWPASS = (2.0, 3.0, 5.0)
ALPHAS = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5)


def score_cases(cases: list, pp, mae, stats, t: int) -> list[dict[str, float]]:
    rows = []
    for c in cases:
        s = preprocess_case(c, pp)
        if not s["available"][t]:
            continue
        cp = im.case_predictions(c, s, t, mae, stats, tuple(pp.clip), methods=("mrfound", "mean_image"))
        if cp is None:
            continue
        row = {"case": c.case, "mean_image": im.psnr(cp.preds["mean_image"], cp.truth, cp.region)}
        for sg in SIGMAS:
            sm = gaussian_filter(cp.preds["mrfound"], sg) if sg > 0 else cp.preds["mrfound"]
            for a in ALPHAS:
                blend = a * sm + (1 - a) * cp.preds["mean_image"]
                row[f"blend_{sg:g}_{a:g}"] = im.psnr(blend, cp.truth, cp.region)
        for lp in LOWPASS:
            low = gaussian_filter(cp.preds["mrfound"], lp)
            for a in ALPHAS[1:]:
                mix = a * cp.preds["mrfound"] + (1 - a) * low
                row[f"lowpass_{lp:g}_{a:g}"] = im.psnr(mix, cp.truth, cp.region)
        rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("work", type=Path)
    ap.add_argument("--run", required=True)
    ap.add_argument("--target", default="t1_art", choices=SEQUENCES)
    ap.add_argument("--cases", type=int, default=240)
    ap.add_argument("--n-train", type=int, default=48, help="training cases to choose the setting on")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.time()
    b = im.BUDGETS["full"] | {"cases": args.cases}
    split = im.phantom_split(b, args.work, seed=0)
    wrapped = load_pretrained(args.work / args.run / "final")
    mae, pp = wrapped.model.eval(), wrapped.preprocessing
    stats = im.baseline_stats(split.train_cases, pp, b["mean_box"], seed=0)
    t = SEQUENCES.index(args.target)
    # about n_train training cases spread over the list (every centre is in), then every held-out case
    step = max(1, len(split.train_cases) // args.n_train)
    train = score_cases(split.train_cases[::step], pp, mae, stats, t)
    test = score_cases(split.test_cases, pp, mae, stats, t)
    keys = [k for k in train[0] if k.startswith(("blend_", "lowpass_"))]

    def mean(rows: list[dict], k: str) -> float:
        return float(np.mean([r[k] for r in rows]))

    best = max((k for k in keys if k.startswith("blend_")), key=lambda k: mean(train, k))
    best_lowpass = max((k for k in keys if k.startswith("lowpass_")), key=lambda k: mean(train, k))
    best_smooth = max((k for k in keys if k.endswith("_1")), key=lambda k: mean(train, k))
    summary = {
        "command": "python " + " ".join(sys.argv),
        "run": args.run,
        "target": args.target,
        "n_train": len(train),
        "n_test": len(test),
        "seconds": round(time.time() - t0, 1),
        "as_synthesised": {"train": mean(train, "blend_0_1"), "test": mean(test, "blend_0_1")},
        "mean_image": {"train": mean(train, "mean_image"), "test": mean(test, "mean_image")},
        "best_smoothing_on_train": {"setting": best_smooth, "train": mean(train, best_smooth),
                                    "test": mean(test, best_smooth)},
        "best_on_train": {"setting": best, "train": mean(train, best), "test": mean(test, best),
                          "test_gain_over_mean_image": im.paired_gain([r[best] for r in test],
                                                                      [r["mean_image"] for r in test])},
        "best_lowpass_on_train": {"setting": best_lowpass, "train": mean(train, best_lowpass),
                                  "test": mean(test, best_lowpass),
                                  "test_gain_over_mean_image": im.paired_gain(
                                      [r[best_lowpass] for r in test], [r["mean_image"] for r in test])},
        "all_settings_test": {k: mean(test, k) for k in keys},
        "all_settings_train": {k: mean(train, k) for k in keys},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary | {"train_cases": train, "test_cases": test}, indent=1))
    print(json.dumps({k: v for k, v in summary.items() if not k.startswith("all_")}, indent=1))


if __name__ == "__main__":
    main()
