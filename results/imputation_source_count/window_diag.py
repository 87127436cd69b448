"""Is the synthesised arterial liver's offset in the model or in the sliding-window assembly?

For each held-out case of a ``benchmarks/imputation.py`` run (work folder, pretraining run folder, cohort
size) with t1_art and at least 1000 liver voxels in its field of view: the whole-volume synthesis of
``mrfound.inference.synthesise_volume`` (what the benchmark scores), and six random 32^3 windows around
liver voxels, each synthesised alone by one forward pass from all the case's other sequences. Records the
mean offset (synthesis - truth) over each window's liver voxels for the single window, for its central
16^3, and for the assembled volume on the same voxels. Writes ``--out`` (JSON) and prints it.

Usage::

    python results/imputation_source_count/window_diag.py WORK/full RUN CASES --out F
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

import imputation as im  # noqa: E402

from mrfound import load_pretrained  # noqa: E402
from mrfound.data.preprocess import preprocess_case  # noqa: E402
from mrfound.data.sequences import SEQUENCES  # noqa: E402
from mrfound.inference import synthesise_volume  # noqa: E402
from mrfound.utils.io import atomic_write_json  # noqa: E402

ROI = 32


def main(work: Path, run: str, cases: int, out: Path) -> dict[str, object]:
    torch.set_num_threads(1)
    split = im.phantom_split(im.BUDGETS["full"] | {"cases": cases}, work, seed=0)
    wrapped = load_pretrained(work / run / "final")
    mae, pp = wrapped.model.eval(), wrapped.preprocessing
    t = SEQUENCES.index("t1_art")
    rng = np.random.default_rng(0)
    rows = []
    for c in split.test_cases:
        s = preprocess_case(c, pp)
        if not s["available"][t]:
            continue
        liver = (s["mask"][0] > 0) & im.fov_mask(c.sequences["t1_art"], s["affine"], s["mask"][0].shape)
        if liver.sum() < 1000:
            continue
        assembled = synthesise_volume(mae, s["image"], s["available"], t, clip=tuple(pp.clip))
        truth = s["image"][t]
        src = torch.as_tensor(s["available"]).clone()
        src[t] = False
        img = torch.as_tensor(s["image"]).clone()
        img[~src] = 0
        target = torch.zeros(len(SEQUENCES), dtype=torch.bool)
        target[t] = True
        idx = np.argwhere(liver)
        centre = np.zeros((ROI,) * 3, dtype=bool)
        centre[ROI // 4 : 3 * ROI // 4, ROI // 4 : 3 * ROI // 4, ROI // 4 : 3 * ROI // 4] = True
        for _ in range(6):
            lo = np.clip(idx[rng.integers(len(idx))] - ROI // 2, 0, np.array(truth.shape) - ROI)
            win = tuple(slice(int(v), int(v) + ROI) for v in lo)
            with torch.no_grad():
                pred = mae.reconstruct(img[(slice(None), *win)][None], src[None], target)[0, t].numpy()
            pred = np.clip(pred, *pp.clip)
            lv = liver[win]
            if lv.sum() < 200:
                continue
            err = pred - truth[win]
            rows.append(
                {
                    "case": c.case,
                    "window": float(err[lv].mean()),
                    "window_centre": float(err[lv & centre].mean()) if (lv & centre).sum() > 20 else None,
                    "assembled": float((assembled[win] - truth[win])[lv].mean()),
                    "truth_liver_mean": float(truth[win][lv].mean()),
                }
            )
    keys = ("window", "window_centre", "assembled", "truth_liver_mean")
    result: dict[str, object] = {
        "command": " ".join(["python", *sys.argv]),
        "run": run,
        "n_windows": len(rows),
        "n_cases": len({r["case"] for r in rows}),
        "mean": {k: float(np.mean([r[k] for r in rows if r[k] is not None])) for k in keys},
        "windows": rows,
    }
    atomic_write_json(out, result)
    print(json.dumps({k: v for k, v in result.items() if k != "windows"}, indent=1))
    return result


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("work", type=Path)
    ap.add_argument("run")
    ap.add_argument("cases", type=int)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    main(a.work, a.run, a.cases, a.out)
