"""Lesion signal statistics measured from images and a mask only, through world coordinates.

Works on any case whose mask (0 bg, 1 liver, 2 target lesion, 3 other lesions) lies on one grid and
whose sequences lie on their own grids: every region is defined on the mask grid, mapped to world
millimetres with the mask's affine, and each sequence is sampled there through its own affine. Used by
the signature tests, the signature benchmark and the preview montage; nothing here knows how the
phantom was made.

Regions (distances in mm on the mask grid; depth = distance to the lesion boundary inside it):
    - lesion: target voxels at least 30 % of the maximal depth inside the lesion (the boundary is
      left out: partial volume and breathing offsets mix it with liver);
    - rim: 2.5 mm (at least 8 %) to 40 % of the maximal depth: peripheral tumour, clear of the
      boundary's partial volume and of a few mm of breathing offset;
      centre: 70-100 % (a central scar or necrosis fills much of it);
    - edge: the boundary shell (depth < 12 % inside, and liver up to 3 mm outside): its 90th
      percentile shows thin enhancing rims and capsules that partial volume hides from ``rim``;
    - liver: liver voxels 6-30 mm from the lesion (the reference; median is robust to vessels);
    - halo: liver voxels 1.5-7 mm from the lesion.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping

import numpy as np

STAT_NAMES: tuple[str, ...] = ("ratio", "mean", "std", "p10", "p90", "rim", "centre", "rim_centre", "edge",
                                "halo")
"""Per-sequence statistics returned by :func:`lesion_statistics` (all relative to the liver median)."""


def sample_world(array: np.ndarray, affine: np.ndarray, xyz: np.ndarray, order: int = 1) -> np.ndarray:
    """Values of ``array`` at world points ``xyz`` (N, 3); NaN outside the volume."""
    from scipy import ndimage

    inv = np.linalg.inv(affine)
    ijk = xyz @ inv[:3, :3].T + inv[:3, 3]
    shape = np.array(array.shape[:3])
    ok = np.all((ijk > -0.5) & (ijk < shape - 0.5), axis=1)
    out = np.full(len(xyz), np.nan, dtype=np.float64)
    if ok.any():
        out[ok] = ndimage.map_coordinates(np.asarray(array, dtype=np.float32), ijk[ok].T, order=order,
                                          mode="nearest")
    return out


def lesion_regions(mask: np.ndarray, affine: np.ndarray, max_points: int = 4000, margin_mm: float = 32.0,
                   seed: int = 0) -> dict[str, np.ndarray]:
    """World points (N, 3) of the regions of the module docstring, subsampled to ``max_points`` each.

    Returns an empty dict when the mask has no target lesion (label 2).
    """
    from scipy import ndimage

    mask = np.asarray(mask)
    target = mask == 2
    if not target.any():
        return {}
    spacing = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(0))
    idx = np.argwhere(target)
    pad = np.ceil(margin_mm / spacing).astype(int) + 1
    lo = np.maximum(idx.min(0) - pad, 0)
    hi = np.minimum(idx.max(0) + pad + 1, mask.shape)
    sl = tuple(slice(a, b) for a, b in zip(lo, hi))
    sub = mask[sl]
    t = sub == 2
    depth = ndimage.distance_transform_edt(np.pad(t, 1), sampling=spacing)[1:-1, 1:-1, 1:-1]
    dmax = float(depth.max())
    dist_out = ndimage.distance_transform_edt(~t, sampling=spacing)
    rel = depth / dmax if dmax > 0 else depth
    regions = {
        "lesion": t & (rel >= 0.3),
        "rim": t & (depth >= max(0.08 * dmax, 2.5)) & (rel <= 0.4),
        "centre": t & (rel >= 0.7),
        "edge": (t & (rel < 0.12)) | ((sub == 1) & (dist_out <= 3.0)),
        "liver": (sub == 1) & (dist_out > 6.0) & (dist_out <= 30.0),
        "halo": (sub == 1) & (dist_out > 1.5) & (dist_out <= 7.0),
    }
    if not regions["lesion"].any():
        regions["lesion"] = t
    if not regions["rim"].any():
        regions["rim"] = t & (rel <= 0.4)
    if not regions["centre"].any():
        regions["centre"] = t & (rel >= rel[t].max() * 0.99)
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for name, m in regions.items():
        ijk = np.argwhere(m) + lo
        if len(ijk) > max_points:
            ijk = ijk[np.sort(rng.choice(len(ijk), max_points, replace=False))]
        out[name] = ijk @ np.asarray(affine)[:3, :3].T + np.asarray(affine)[:3, 3]
    return out


def lesion_statistics(images: Mapping[str, tuple[np.ndarray, np.ndarray]], mask: np.ndarray,
                      mask_affine: np.ndarray, **kwargs) -> dict[str, dict[str, float]]:
    """Per-sequence lesion statistics relative to the surrounding liver (see :data:`STAT_NAMES`).

    Args:
        images: Sequence -> (array, affine), each on its own grid.
        mask: Label map (0 bg, 1 liver, 2 target, 3 other lesions).
        mask_affine: The mask's affine.
        **kwargs: Passed to :func:`lesion_regions`.

    Returns:
        Sequence -> statistic -> value (NaN where a region is empty or outside the sequence's FOV);
        ``liver`` holds the liver median in scanner units.
    """
    regions = lesion_regions(mask, mask_affine, **kwargs)
    out: dict[str, dict[str, float]] = {}
    for seq, (arr, aff) in images.items():
        stats = {k: float("nan") for k in (*STAT_NAMES, "liver")}
        if regions:
            vals = {k: sample_world(arr, aff, p) for k, p in regions.items()}
            liver = np.nanmedian(vals["liver"]) if np.isfinite(vals["liver"]).any() else np.nan
            if np.isfinite(liver) and liver > 0:
                les = vals["lesion"][np.isfinite(vals["lesion"])] / liver
                allv = np.concatenate([vals["lesion"], vals["rim"]])
                allv = allv[np.isfinite(allv)] / liver

                med = functools.partial(_region_stat, vals, liver, np.median)
                mean = functools.partial(_region_stat, vals, liver, np.mean)  # a scar or necrosis counts
                p90 = functools.partial(_region_stat, vals, liver, lambda v: np.percentile(v, 90))
                stats.update(
                    liver=float(liver), ratio=float(np.median(les)) if les.size else float("nan"),
                    mean=float(allv.mean()) if allv.size else float("nan"),
                    std=float(allv.std()) if allv.size else float("nan"),
                    p10=float(np.percentile(allv, 10)) if allv.size else float("nan"),
                    p90=float(np.percentile(allv, 90)) if allv.size else float("nan"),
                    rim=mean("rim"), centre=mean("centre"), halo=med("halo"), edge=p90("edge"),
                )
                stats["rim_centre"] = stats["rim"] / stats["centre"] if stats["centre"] > 0 else float("nan")
        out[seq] = stats
    return out


def _region_stat(vals: Mapping[str, np.ndarray], liver: float, fn: Callable[[np.ndarray], float],
                 name: str) -> float:
    v = vals[name][np.isfinite(vals[name])]
    return float(fn(v) / liver) if v.size else float("nan")


def load_case_images(row: Mapping[str, str], root,
                     sequences) -> tuple[dict, np.ndarray | None, np.ndarray | None]:
    """Read a manifest row's NIfTIs: ({seq: (array, affine)}, mask array, mask affine)."""
    from pathlib import Path

    import nibabel as nib

    root = Path(root)
    images = {}
    for s in sequences:
        p = row.get(s) or ""
        if p:
            img = nib.load(str(root / p))
            images[s] = (np.asarray(img.dataobj), img.affine)
    mask = aff = None
    if row.get("mask"):
        m = nib.load(str(root / row["mask"]))
        mask, aff = np.asarray(m.dataobj), m.affine
    return images, mask, aff
