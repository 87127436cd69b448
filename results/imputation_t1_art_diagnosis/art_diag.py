"""Why t1_art imputation trails the mean image: per-case liver level and error decomposition.

Reuses the 240-case, 8000-step run of ``benchmarks/imputation.py`` (its work folder, given as the first
argument) and repeats its held-out split, its body-centred mean image and its liver region for t1_art only.
For each held-out case it records the liver mean of the truth, of mrfound's synthesis and of the mean image,
PSNR, and the MSE split into the squared liver-mean offset (bias^2) and the rest. Writes ``cases.json``
beside this script and prints the summary.

Usage::

    python results/imputation_t1_art_diagnosis/art_diag.py WORK/full
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from sklearn.model_selection import GroupShuffleSplit

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from testutils import load_module  # noqa: E402

from mrfound import load_pretrained  # noqa: E402
from mrfound.data.manifest import read_manifest  # noqa: E402
from mrfound.data.preprocess import preprocess_case  # noqa: E402
from mrfound.data.sequences import SEQUENCES  # noqa: E402
from mrfound.inference import synthesise_volume  # noqa: E402


def main(work: Path) -> None:
    im = load_module("benchmarks/imputation.py")
    torch.set_num_threads(1)
    b = im.BUDGETS["full"]
    man = read_manifest(work / "phantom_240_s1.5_seed0" / "manifest.csv")
    groups = [c.subject for c in man.cases]
    split = GroupShuffleSplit(1, test_size=b["test_fraction"], random_state=0)
    tr, te = next(split.split(np.arange(len(man)), groups=groups))
    wrapped = load_pretrained(work / "pretrain_phantom_240_n8000_s4_r32_27dee1" / "final")
    mae, pp = wrapped.model.eval(), wrapped.preprocessing
    t = SEQUENCES.index("t1_art")

    box_sum, n = np.zeros((1, *(b["mean_box"],) * 3)), 0
    for i in sorted(tr):
        s = preprocess_case(man.cases[i], pp)
        if s["available"][t]:
            body = (s["image"][np.flatnonzero(s["available"])] > 0.05).any(0)
            box_sum += im._liver_box(s["image"], np.argwhere(body).mean(0), b["mean_box"])[t : t + 1]
            n += 1
    mean_box = (box_sum / n).astype(np.float32)

    rows = []
    for i in sorted(te):
        c = man.cases[i]
        s = preprocess_case(c, pp)
        av = s["available"]
        liver = s["mask"][0] > 0
        region = liver & im.fov_mask(c.sequences["t1_art"], s["affine"], liver.shape) if av[t] else None
        if region is None or region.sum() < 10:
            continue
        src = [j for j in np.flatnonzero(av) if j != t]
        centre = np.argwhere((s["image"][src] > 0.05).any(0)).mean(0)
        preds = {
            "mrfound": synthesise_volume(mae, s["image"], av, t, clip=tuple(pp.clip)),
            "mean_image": im._place_box(mean_box, centre, liver.shape)[0],
        }
        truth = s["image"][t]
        row = {"case": c.case, "truth_liver_mean": float(truth[region].mean())}
        for k, v in preds.items():
            d = (v - truth)[region]
            row |= {
                f"{k}_liver_mean": float(v[region].mean()),
                f"{k}_psnr": im.psnr(v, truth, region),
                f"{k}_mse": float((d**2).mean()),
                f"{k}_bias2": float(d.mean() ** 2),
            }
        rows.append(row)
    (HERE / "cases.json").write_text(json.dumps(rows, indent=1))
    truth = np.array([r["truth_liver_mean"] for r in rows])
    summary = {"n_cases": len(rows), "truth_liver_mean": float(truth.mean())}
    for k in preds:
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
    print(json.dumps(summary, indent=1))
    (HERE / "summary.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
