"""Each CHAOS subject's liver brightness relative to the body around it, in the benchmark's normalised T2.

Usage: ``python results/chaos_organ_scale_4mm/liver_contrast.py WORK`` with WORK a ``chaos_segmentation.py
--work`` folder whose 4 mm cache exists (it is built if not). Prints one line per subject: the median
normalised intensity inside the liver label, the median over the rest of the body mask, and their ratio,
then the gain that would bring the median typical liver to subject 15's ratio (what ``--organ-scale``
must reach to show a training liver as dark as subject 15's). Reads the labels: a look at the data,
not part of any model's training.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

import chaos_segmentation as cs  # noqa: E402


def main(work: Path) -> None:
    labelled, _ = cs.build_manifests(REPO.parent / "shared" / "data" / "chaos_t2", work)
    ratios = {}
    for c in cs.load_cases(labelled, 4.0, 32, work / "cache_seg", "log_otsu"):
        image, liver = c["image"][0], c["mask"].astype(bool)
        liver_med, body_med = np.median(image[liver]), np.median(image[c["body"] & ~liver])
        ratio = ratios[c["case"]] = liver_med / body_med
        print(f"{c['case']}: liver {liver_med:.3f}, rest of body {body_med:.3f}, ratio {ratio:.2f}")
    typical = float(np.median([r for k, r in ratios.items() if k != "15"]))
    gain = ratios["15"] / typical
    print(f"median ratio of the other 14: {typical:.2f}; gain to reach subject 15's: {gain:.2f}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: liver_contrast.py WORK")
    main(Path(sys.argv[1]))
