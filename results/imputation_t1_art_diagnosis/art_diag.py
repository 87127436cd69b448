"""Why t1_art imputation trails the mean image: per-case liver level and error decomposition.

Reuses the 240-case, 8000-step run of ``benchmarks/imputation.py`` (its work folder, given as the first
argument) and its split, baselines and per-case predictions (``phantom_split``, ``baseline_stats``,
``case_predictions``), for t1_art only. For each case it records the liver mean of the truth, of
mrfound's synthesis and of the mean image, PSNR, the MSE split into the squared liver-mean offset (bias^2)
and the rest, and the body mean of truth and synthesis. The second argument picks the cases: ``test``
(the benchmark's held-out cases, default) or ``train`` (the first 48 training cases, to tell an offset the
model learnt from one it meets only on unseen cases). Writes ``cases_<which>.json`` and
``summary_<which>.json`` beside this script (or into ``--out``) and prints the summary. ``--run`` names
another pretraining run folder of the same work folder (default: the 8000-step run).

Usage::

    python results/imputation_t1_art_diagnosis/art_diag.py WORK/full [test|train] [--run NAME] [--out DIR] \\
        [--cases N]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
# the benchmark scripts import their siblings (``_common``) from their own folder
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

import imputation as im  # noqa: E402

from mrfound import load_pretrained  # noqa: E402
from mrfound.data.preprocess import preprocess_case  # noqa: E402
from mrfound.data.sequences import SEQUENCES  # noqa: E402

METHODS = ("mrfound", "mean_image")
DEFAULT_RUN = "pretrain_phantom_240_n8000_s4_r32_27dee1"


def main(work: Path, which: str = "test", run: str = DEFAULT_RUN, out: Path = HERE, cases: int = 240) -> None:
    torch.set_num_threads(1)
    b = im.BUDGETS["full"] | {"cases": cases}
    split = im.phantom_split(b, work, seed=0)
    wrapped = load_pretrained(work / run / "final")
    mae, pp = wrapped.model.eval(), wrapped.preprocessing
    stats = im.baseline_stats(split.train_cases, pp, b["mean_box"], seed=0)
    t = SEQUENCES.index("t1_art")

    rows = []
    for c in split.test_cases if which == "test" else split.train_cases[:48]:
        s = preprocess_case(c, pp)
        if not s["available"][t]:
            continue
        cp = im.case_predictions(c, s, t, mae, stats, tuple(pp.clip), methods=METHODS)
        if cp is None:
            continue
        src = [SEQUENCES.index(n) for n in cp.sources]
        fov = im.fov_mask(c.sequences["t1_art"], s["affine"], cp.region.shape)
        body = (s["image"][src] > 0.05).any(0) & fov
        row = {
            "case": c.case,
            "truth_liver_mean": float(cp.truth[cp.region].mean()),
            "truth_body_mean": float(cp.truth[body].mean()),
            "mrfound_body_mean": float(cp.preds["mrfound"][body].mean()),
        }
        for k, v in cp.preds.items():
            d = (v - cp.truth)[cp.region]
            row |= {
                f"{k}_liver_mean": float(v[cp.region].mean()),
                f"{k}_psnr": im.psnr(v, cp.truth, cp.region),
                f"{k}_mse": float((d**2).mean()),
                f"{k}_bias2": float(d.mean() ** 2),
            }
        rows.append(row)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"cases_{which}.json").write_text(json.dumps(rows, indent=1))
    truth = np.array([r["truth_liver_mean"] for r in rows])
    summary: dict[str, object] = {"cases": which, "n_cases": len(rows)}
    summary["truth_liver_mean"] = float(truth.mean())
    for k in METHODS:
        level = np.array([r[f"{k}_liver_mean"] for r in rows])
        summary[k] = {
            "psnr": float(np.mean([r[f"{k}_psnr"] for r in rows])),
            "mse": float(np.mean([r[f"{k}_mse"] for r in rows])),
            "bias2": float(np.mean([r[f"{k}_bias2"] for r in rows])),
            "mse_without_offset": float(np.mean([r[f"{k}_mse"] - r[f"{k}_bias2"] for r in rows])),
            "liver_mean_offset": float((level - truth).mean()),
            "cases_too_bright": int((level > truth).sum()),
            "corr_liver_level_with_truth": float(np.corrcoef(level, truth)[0, 1]),
        }
    # the synthesis' offset over the whole body in the target's field of view (liver or not)
    summary["mrfound_body_mean_offset"] = float(
        np.mean([r["mrfound_body_mean"] - r["truth_body_mean"] for r in rows])
    )
    print(json.dumps(summary, indent=1))
    (out / f"summary_{which}.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("work", type=Path)
    ap.add_argument("which", nargs="?", choices=("test", "train"), default="test")
    ap.add_argument("--run", default=DEFAULT_RUN)
    ap.add_argument("--out", type=Path, default=HERE)
    ap.add_argument("--cases", type=int, default=240, help="the run's --cases (cohort size)")
    a = ap.parse_args()
    main(a.work, a.which, a.run, a.out, a.cases)
