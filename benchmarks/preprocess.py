"""Preprocessing cost on the CHAOS T2 set: first pass and cache hits, in cases per second.

Builds the CHAOS manifest (organ labels remapped to liver=1) in a temporary folder, then measures
(1) a plain MONAI baseline (``Orientationd`` + ``Spacingd`` of image and mask to the same spacing, then
percentile scaling: what a MONAI tutorial does, without a common grid across sequences or a body crop),
(2) the first pass of :class:`PreprocessCache` (preprocess + write), (3) cache hits (read the arrays
back, what a training epoch does) and (4) the key check ``mrfound preprocess`` does on a second run.
MONAI's import time is reported apart and excluded from the rates. Prints one JSON object.

Usage::

    .venv/bin/python benchmarks/preprocess.py [--data ../shared/data/chaos_t2] [--spacing 1.5]
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _baseline(case, spacing: float) -> int:
    import torch
    from monai.data import MetaTensor
    from monai.transforms import Orientationd, ScaleIntensityRangePercentilesd, Spacingd

    from mrfound.data.readers import read_image

    img, aff = read_image(case.sequences["t2"])
    msk, maff = read_image(case.mask)
    d = {
        "image": MetaTensor(torch.from_numpy(img[None]), affine=torch.as_tensor(aff)),
        "mask": MetaTensor(torch.from_numpy(msk[None]), affine=torch.as_tensor(maff)),
    }
    labels = (("L", "R"), ("P", "A"), ("I", "S"))
    d = Orientationd(keys=["image", "mask"], axcodes="RAS", labels=labels)(d)
    d = Spacingd(keys=["image", "mask"], pixdim=spacing, mode=["bilinear", "nearest"], dtype=np.float32)(d)
    d = ScaleIntensityRangePercentilesd(keys="image", lower=1, upper=99, b_min=0, b_max=1, clip=True)(d)
    return int(d["image"].numel())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    from mrfound.data.preprocess import FOREGROUND_METHODS, PreprocessConfig

    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "chaos_t2"))
    ap.add_argument("--spacing", type=float, default=1.5)
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument(
        "--foreground",
        choices=FOREGROUND_METHODS,
        default=PreprocessConfig().foreground,
        help="foreground threshold (default: the library's, %(default)s)",
    )
    args = ap.parse_args()
    data = Path(args.data)
    if not data.is_dir():
        print(json.dumps({"skipped": f"{data} is absent"}))
        return

    t0 = time.perf_counter()
    import monai.transforms  # noqa: F401

    import_s = time.perf_counter() - t0

    from mrfound.data.cache import PreprocessCache
    from mrfound.data.importers import import_pattern
    from mrfound.data.manifest import read_manifest
    from mrfound.data.preprocess import PreprocessConfig
    from mrfound.utils.machine import machine_info

    with tempfile.TemporaryDirectory() as tmp:
        mpath = Path(tmp) / "chaos.csv"
        import_pattern(
            data,
            "images/chaos_{case}_t2.nii.gz",
            mpath,
            sequence="t2",
            mask_pattern="labels/chaos_{case}_labels.nii.gz",
            mask_map="1:1,2:0,3:0,4:0",
        )
        manifest = read_manifest(mpath)
        n = len(manifest)
        config = PreprocessConfig(spacing=args.spacing, foreground=args.foreground)
        result: dict[str, object] = {
            "benchmark": "preprocess",
            "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
            "machine": machine_info(),
            "dataset": str(data),
            "cases": n,
            "spacing_mm": args.spacing,
            "foreground": args.foreground,
            "monai_import_s": round(import_s, 2),
        }
        _baseline(manifest.cases[0], args.spacing)  # warm-up (first-call costs), not timed
        if not args.no_baseline:
            t = time.perf_counter()
            vox = [_baseline(c, args.spacing) for c in manifest]
            dt = time.perf_counter() - t
            result["baseline_monai_orientation_spacing"] = {
                "cases_per_s": round(n / dt, 3),
                "mean_voxels": int(np.mean(vox)),
            }
        cache = PreprocessCache(Path(tmp) / "cache", config)
        t = time.perf_counter()
        shapes = []
        for c in manifest:
            sample, hit = cache.get_with_status(c)
            assert not hit
            shapes.append(sample["image"].shape[1:])
        first = time.perf_counter() - t
        t = time.perf_counter()
        for c in manifest:
            _, hit = cache.get_with_status(c)
            assert hit
        hit_s = time.perf_counter() - t
        t = time.perf_counter()
        assert all(cache.has(c) for c in manifest)
        check_s = time.perf_counter() - t
        size = sum(f.stat().st_size for f in (Path(tmp) / "cache").rglob("*.npz"))
        result.update(
            {
                "first_pass": {
                    "seconds": round(first, 2),
                    "cases_per_s": round(n / first, 3),
                    "mean_voxels": int(np.mean([np.prod(s) for s in shapes])),
                },
                "cache_hit_load": {"seconds": round(hit_s, 3), "cases_per_s": round(n / hit_s, 2)},
                "cache_hit_key_check": {"seconds": round(check_s, 3), "cases_per_s": round(n / check_s, 1)},
                "cache_mb": round(size / 1e6, 1),
            }
        )
        if "baseline_monai_orientation_spacing" in result:
            base = result["baseline_monai_orientation_spacing"]["cases_per_s"]  # type: ignore[index]
            result["first_pass_vs_baseline"] = round((n / first) / base, 3)
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
