"""How the synthesised arterial liver's level depends on how many sources the decoder gets.

For held-out (``test``) or the first 12 training (``train``) cases of a ``benchmarks/imputation.py`` run (its
work folder, the pretraining run folder in it and the cohort size), four random 32^3 windows around liver
voxels per case; in each, t1_art is hidden and synthesised by one forward pass (no sliding-window
assembly) from k of the case's other sequences, k = 1 .. all (two random draws of the sources per k below
all). Records the mean offset (synthesis - truth) over the window's liver voxels inside the t1_art field of
view, per k. Writes ``--out`` (JSON) and prints it.

Usage::

    python results/imputation_source_count/source_count_diag.py WORK/full RUN CASES [test|train] --out F
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
from mrfound.utils.io import atomic_write_json  # noqa: E402

ROI = 32


def main(work: Path, run: str, cases: int, which: str, out: Path) -> dict[str, object]:
    torch.set_num_threads(1)
    split = im.phantom_split(im.BUDGETS["full"] | {"cases": cases}, work, seed=0)
    wrapped = load_pretrained(work / run / "final")
    mae, pp = wrapped.model.eval(), wrapped.preprocessing
    t = SEQUENCES.index("t1_art")
    rng = np.random.default_rng(0)
    offsets: dict[int, list[float]] = {}
    for c in split.test_cases if which == "test" else split.train_cases[:12]:
        s = preprocess_case(c, pp)
        if not s["available"][t]:
            continue
        liver = (s["mask"][0] > 0) & im.fov_mask(c.sequences["t1_art"], s["affine"], s["mask"][0].shape)
        if liver.sum() < 1000:
            continue
        truth = s["image"][t]
        others = [j for j in np.flatnonzero(s["available"]) if j != t]
        target = torch.zeros(len(SEQUENCES), dtype=torch.bool)
        target[t] = True
        idx = np.argwhere(liver)
        for _ in range(4):
            lo = np.clip(idx[rng.integers(len(idx))] - ROI // 2, 0, np.array(truth.shape) - ROI)
            win = tuple(slice(int(v), int(v) + ROI) for v in lo)
            lv = liver[win]
            if lv.sum() < 200:
                continue
            for k in range(1, len(others) + 1):
                for _ in range(2 if k < len(others) else 1):
                    src = torch.zeros(len(SEQUENCES), dtype=torch.bool)
                    src[rng.choice(others, size=k, replace=False)] = True
                    img = torch.as_tensor(s["image"])[(slice(None), *win)].clone()
                    img[~src] = 0
                    with torch.no_grad():
                        pred = mae.reconstruct(img[None], src[None], target)[0, t].numpy()
                    pred = np.clip(pred, *pp.clip)
                    offsets.setdefault(k, []).append(float((pred - truth[win])[lv].mean()))
    result: dict[str, object] = {
        "command": " ".join(["python", *sys.argv]),
        "cases": which,
        "run": run,
        "liver_offset_by_sources": {
            str(k): {"mean": float(np.mean(v)), "n_windows": len(v)} for k, v in sorted(offsets.items())
        },
    }
    atomic_write_json(out, result)
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("work", type=Path)
    ap.add_argument("run")
    ap.add_argument("cases", type=int)
    ap.add_argument("which", nargs="?", choices=("test", "train"), default="test")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    main(a.work, a.run, a.cases, a.which, a.out)
