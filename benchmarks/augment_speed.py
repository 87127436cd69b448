"""Speed of the training-crop augmentations against MONAI's ``Affine`` transform, on the same draws.

``mrfound.data.augment.augment_spatial`` builds MONAI's rotation/zoom matrix and resamples image and
labels through one torch sampling grid; the baseline is MONAI's ``Affine`` called once for the image
(bilinear) and once for the labels (nearest), the function's implementation up to commit b5cc027. Both run
on the same crops (smooth noise with a blob label, of the edge :func:`spatial_context` asks for) and the
same random draws (the outputs agree to 1e-5, tests/data/test_augment.py), interleaved, best of
``--repeats``. Also times the chain ``benchmarks/chaos_segmentation.py`` applies to a training crop with
every augmentation on (spatial, organ contrast, intensity), per crop and per batch of four.

Usage: ``python benchmarks/augment_speed.py [--crops 200] [--repeats 3]``; prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mrfound.data.augment import (  # noqa: E402
    DEFAULT_ROTATE_DEG,
    DEFAULT_ZOOM,
    augment_intensity,
    augment_organ_contrast,
    augment_spatial,
    spatial_context,
)
from mrfound.utils.machine import machine_info  # noqa: E402


def monai_affine(
    image: np.ndarray, labels: np.ndarray, rng: np.random.Generator, out: int
) -> tuple[np.ndarray, np.ndarray]:
    """The baseline: MONAI ``Affine`` for the image and the labels, with augment_spatial's draws."""
    from monai.transforms import Affine

    angles = np.deg2rad(rng.uniform(-DEFAULT_ROTATE_DEG, DEFAULT_ROTATE_DEG, 3))
    zoom = float(np.exp(rng.uniform(*np.log(DEFAULT_ZOOM))))
    kw = {
        "rotate_params": tuple(float(a) for a in angles),
        "scale_params": (1 / zoom,) * 3,
        "spatial_size": (out,) * 3,
        "padding_mode": "zeros",
        "image_only": True,
    }
    img = np.asarray(Affine(mode="bilinear", **kw)(torch.as_tensor(image)), dtype=np.float32)
    lab = Affine(mode="nearest", **kw)(torch.as_tensor(labels[None], dtype=torch.float32))
    return img, np.rint(np.asarray(lab)[0]).astype(labels.dtype)


def crops(n: int, out: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n`` smooth random crops with a blob label, of the edge augment_spatial needs for ``out``."""
    from scipy.ndimage import gaussian_filter

    edge = out + 2 * spatial_context(out)
    rng = np.random.default_rng(seed)
    base = gaussian_filter(rng.normal(size=(edge + 16,) * 3), 2).astype(np.float32)
    result = []
    for _ in range(n):
        o = rng.integers(0, 16, 3)
        img = base[o[0] : o[0] + edge, o[1] : o[1] + edge, o[2] : o[2] + edge][None].copy()
        result.append((img, (img[0] > 0).astype(np.uint8)))
    return result


def time_calls(fn, items, repeats: int) -> float:
    """Best-of-``repeats`` seconds per call of ``fn`` over ``items`` (same seeds every repeat)."""
    best = float("inf")
    for _ in range(repeats):
        rng = np.random.default_rng(0)
        t = time.perf_counter()
        for img, lab in items:
            fn(img, lab, rng)
        best = min(best, (time.perf_counter() - t) / len(items))
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--crops", type=int, default=200, help="crops per timing (200)")
    ap.add_argument("--repeats", type=int, default=3, help="timings per variant; the best counts (3)")
    ap.add_argument("--roi", type=int, default=32, help="output edge (32, the CHAOS ROI)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1, as the CHAOS runs)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    items = crops(args.crops, args.roi)
    ours = lambda i, m, r: augment_spatial(i, m, r, out_size=args.roi)  # noqa: E731
    base = lambda i, m, r: monai_affine(i, m, r, args.roi)  # noqa: E731
    ours(*items[0], np.random.default_rng(0))  # first-call costs (imports), not timed
    base(*items[0], np.random.default_rng(0))
    t_ours, t_base = [], []
    for _ in range(2):  # interleaved, so a change in machine load hits both
        t_base.append(time_calls(base, items, args.repeats))
        t_ours.append(time_calls(ours, items, args.repeats))

    def full(i, m, r):  # the CHAOS sampler's chain with every augmentation on
        img, lab = augment_spatial(i, m, r, out_size=args.roi)
        return augment_intensity(augment_organ_contrast(img, lab, r), r), lab

    t_full = time_calls(full, items, args.repeats)
    result = {
        "benchmark": "augment_speed",
        "command": shlex.join(["python", "benchmarks/augment_speed.py", *sys.argv[1:]]),
        "machine": machine_info(),
        "crops": args.crops,
        "roi": args.roi,
        "crop_edge": int(items[0][0].shape[-1]),
        "spatial_ms": round(1000 * min(t_ours), 2),
        "monai_affine_ms": round(1000 * min(t_base), 2),
        "speedup_vs_monai_affine": round(min(t_base) / min(t_ours), 2),
        "spatial_organ_intensity_ms": round(1000 * t_full, 2),
        "chaos_batch_of_4_ms": round(4000 * t_full, 1),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
