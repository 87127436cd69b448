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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _art_windows import ART, ROI, art_cases, load_run, random_window, synthesise_window  # noqa: E402

from mrfound.inference import synthesise_volume  # noqa: E402
from mrfound.utils.io import atomic_write_json  # noqa: E402


def main(work: Path, run: str, cases: int, out: Path) -> dict[str, object]:
    split, mae, pp = load_run(work, run, cases)
    rng = np.random.default_rng(0)
    centre = np.zeros((ROI,) * 3, dtype=bool)
    centre[ROI // 4 : 3 * ROI // 4, ROI // 4 : 3 * ROI // 4, ROI // 4 : 3 * ROI // 4] = True
    rows = []
    for c, s, liver in art_cases(split.test_cases, pp):
        assembled = synthesise_volume(mae, s["image"], s["available"], ART, clip=tuple(pp.clip))
        truth = s["image"][ART]
        src = torch.as_tensor(s["available"]).clone()
        src[ART] = False
        for _ in range(6):
            win = random_window(rng, liver)
            pred = synthesise_window(mae, s["image"], src, win, pp.clip)
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
