"""How much liver Dice a grid costs: a perfect segmentation on an S mm grid, scored on the native grid.

Each CHAOS liver label is resampled onto the benchmark's isotropic grid (the same preprocessing as
``benchmarks/chaos_segmentation.py``: log-Otsu foreground, nearest-neighbour labels) and back onto the
label's own grid, then compared with the original. Prints and writes ``ceiling.json`` beside this script.

Usage::

    python results/chaos_grid_6mm/ceiling.py WORK 4 5 6
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
# the benchmark scripts import their siblings (``_common``) from their own folder
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

import chaos_segmentation as cs  # noqa: E402

from mrfound.inference import resample_to_grid  # noqa: E402


def main(work: Path, spacings: list[float]) -> None:
    labelled, _ = cs.build_manifests(REPO.parent / "shared" / "data" / "chaos_t2", work)
    out = {}
    for sp in spacings:
        dice = []
        for c in cs.load_cases(labelled, sp, 32, work / f"cache_ceiling_{sp:g}", "log_otsu"):
            back = resample_to_grid(
                c["mask"].astype(np.float32), c["affine"], c["native_affine"], c["native_shape"], nearest=True
            )
            dice.append(cs._dice(back > 0.5, np.asarray(nib.load(str(c["mask_path"])).dataobj) == 1))
        out[f"{sp:g}"] = {"mean": float(np.mean(dice)), "min": float(np.min(dice)), "per_case": dice}
        print(f"{sp:g} mm: mean {np.mean(dice):.4f}, min {np.min(dice):.4f}", flush=True)
    (HERE / "ceiling.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]), [float(x) for x in sys.argv[2:]])
