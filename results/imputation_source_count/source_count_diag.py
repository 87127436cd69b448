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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _art_windows import ART, art_cases, load_run, random_window, synthesise_window  # noqa: E402

from mrfound.data.sequences import SEQUENCES  # noqa: E402
from mrfound.utils.io import atomic_write_json  # noqa: E402


def main(work: Path, run: str, cases: int, which: str, out: Path) -> dict[str, object]:
    split, mae, pp = load_run(work, run, cases)
    rng = np.random.default_rng(0)
    offsets: dict[int, list[float]] = {}
    for _, s, liver in art_cases(split.test_cases if which == "test" else split.train_cases[:12], pp):
        truth = s["image"][ART]
        others = [j for j in np.flatnonzero(s["available"]) if j != ART]
        for _ in range(4):
            win = random_window(rng, liver)
            lv = liver[win]
            if lv.sum() < 200:
                continue
            for k in range(1, len(others) + 1):
                for _ in range(2 if k < len(others) else 1):
                    src = torch.zeros(len(SEQUENCES), dtype=torch.bool)
                    src[rng.choice(others, size=k, replace=False)] = True
                    pred = synthesise_window(mae, s["image"], src, win, pp.clip)
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
