"""Hand-crafted radiomics-style lesion features: the classical baseline of DESIGN §7.

Per sequence, inside the lesion ROI: intensity mean, standard deviation, 10/50/90th percentiles,
skewness, kurtosis; rim minus core mean (wash-out / peripheral enhancement patterns); lesion minus
liver mean and a bounded lesion-vs-liver contrast. Per case: volume, sphericity, extent (fill of the
bounding box), elongation and flatness (principal axes).

The ROI is the mask's target lesion (label 2) when the case has one, else a sphere of ``radius_mm``
around the lesion point. The liver reference is mask label 1 (minus the lesion) when present, else a
spherical shell around the ROI inside the body. Shape features are NaN without a mask (a sphere
says nothing about the lesion), and all features of a missing sequence are NaN; the probe's
``SimpleImputer`` fills them with training means, which is how missing sequences are handled by
this baseline.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage, stats

from mrfound.errors import ConfigError

INTENSITY_FEATURES: tuple[str, ...] = (
    "mean",
    "std",
    "p10",
    "p50",
    "p90",
    "skew",
    "kurtosis",
    "rim_minus_core",
    "lesion_minus_liver",
    "lesion_liver_contrast",
)
SHAPE_FEATURES: tuple[str, ...] = ("volume_ml", "sphericity", "extent", "elongation", "flatness")


def radiomics_feature_names(sequences: Sequence[str]) -> list[str]:
    """Column names of :func:`radiomics_features` for a sequence vocabulary, in a fixed order."""
    return [f"{s}_{f}" for s in sequences for f in INTENSITY_FEATURES] + [
        f"shape_{f}" for f in SHAPE_FEATURES
    ]


def _spacing3(spacing: float | Sequence[float]) -> np.ndarray:
    sp = np.broadcast_to(np.asarray(spacing, dtype=np.float64), (3,)).copy()
    if (sp <= 0).any():
        raise ConfigError(f"spacing must be positive, got {list(sp)}")
    return sp


def sphere_mask(
    shape: Sequence[int], center: Sequence[float], radius_mm: float, spacing: float | Sequence[float] = 1.0
) -> np.ndarray:
    """Boolean ball of ``radius_mm`` around voxel coordinates ``center``."""
    sp = _spacing3(spacing)
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    d2 = sum(((g - c) * s) ** 2 for g, c, s in zip(grids, center, sp))
    return d2 <= radius_mm**2


def shape_features(roi: np.ndarray, spacing: float | Sequence[float] = 1.0) -> dict[str, float]:
    """Volume (ml), sphericity, extent, elongation and flatness of a binary ROI.

    The surface area counts exposed voxel faces and multiplies by 2/3, the mean projection factor of
    a randomly oriented surface onto the axis-aligned faces, so a voxelised ball has sphericity ~1.
    """
    sp = _spacing3(spacing)
    roi = np.asarray(roi, dtype=bool)
    n = int(roi.sum())
    if n == 0:
        return {f: float("nan") for f in SHAPE_FEATURES}
    volume = n * float(np.prod(sp))
    padded = np.pad(roi, 1)
    face_area = 0.0
    for ax in range(3):
        exposed = np.count_nonzero(np.diff(padded.astype(np.int8), axis=ax))
        face_area += exposed * float(np.prod(np.delete(sp, ax)))
    area = face_area * 2.0 / 3.0
    sphericity = math.pi ** (1 / 3) * (6 * volume) ** (2 / 3) / area
    idx = np.argwhere(roi)
    bbox = (idx.max(0) - idx.min(0) + 1) * sp
    extent = volume / float(np.prod(bbox))
    if n >= 4:
        eig = np.sort(np.linalg.eigvalsh(np.cov((idx * sp).T)))[::-1]
        eig = np.clip(eig, 1e-12, None)
        elongation, flatness = math.sqrt(eig[1] / eig[0]), math.sqrt(eig[2] / eig[0])
    else:
        elongation = flatness = float("nan")
    return {
        "volume_ml": volume / 1000.0,
        "sphericity": float(min(sphericity, 1.5)),
        "extent": float(extent),
        "elongation": float(elongation),
        "flatness": float(flatness),
    }


def lesion_regions(
    shape: Sequence[int],
    *,
    mask: np.ndarray | None = None,
    lesion_center: Sequence[float] | None = None,
    body: np.ndarray | None = None,
    spacing: float | Sequence[float] = 1.0,
    radius_mm: float = 10.0,
) -> tuple[np.ndarray, np.ndarray, bool]:
    """The lesion ROI and the liver reference region of one case.

    Returns:
        ``(roi, liver, from_mask)`` boolean volumes and whether the ROI came from a mask.

    Raises:
        ConfigError: neither a mask with label 2 nor a lesion centre is given.
    """
    shape = tuple(int(s) for s in shape)
    m = None if mask is None else np.asarray(mask).reshape(shape)
    if m is not None and (m == 2).any():
        roi, from_mask = m == 2, True
    elif lesion_center is not None:
        roi, from_mask = sphere_mask(shape, lesion_center, radius_mm, spacing), False
    else:
        raise ConfigError("radiomics needs a mask with a target lesion (label 2) or a lesion point")
    if m is not None and ((m == 1) & ~roi).any():
        liver = (m == 1) & ~roi
    else:
        sp = _spacing3(spacing)
        dist = ndimage.distance_transform_edt(~roi, sampling=sp)
        r_eq = (3 * roi.sum() * np.prod(sp) / (4 * math.pi)) ** (1 / 3)
        liver = (dist > max(0.5 * r_eq, 2 * sp.max())) & (dist <= max(1.5 * r_eq, 6 * sp.max()))
        if body is not None:
            liver &= np.asarray(body, dtype=bool).reshape(shape)
        if m is not None:
            liver &= m == 0  # keep other lesions (label 3) out of the reference
    return roi, liver, from_mask


def radiomics_features(
    image: np.ndarray,
    available: Sequence[bool],
    sequences: Sequence[str],
    *,
    mask: np.ndarray | None = None,
    lesion_center: Sequence[float] | None = None,
    body: np.ndarray | None = None,
    spacing: float | Sequence[float] = 1.0,
    radius_mm: float = 10.0,
) -> dict[str, float]:
    """Radiomics-style features of one case on a common grid.

    Args:
        image: (S, X, Y, Z) normalised intensities in ``sequences`` order.
        available: (S,) which sequences exist; the others give NaN features.
        sequences: Sequence names.
        mask: Optional label map (X, Y, Z) or (1, X, Y, Z): 1 liver, 2 target lesion, 3 other lesions.
        lesion_center: Voxel coordinates of the lesion (used when the mask has no label 2).
        body: Optional foreground mask (limits the liver shell without a mask).
        spacing: Voxel size in mm.
        radius_mm: Radius of the spherical ROI without a mask.

    Returns:
        ``{name: value}`` in :func:`radiomics_feature_names` order.
    """
    image = np.asarray(image, dtype=np.float64)
    if image.ndim != 4 or image.shape[0] != len(sequences):
        raise ConfigError(f"image must be (S={len(sequences)}, X, Y, Z); got {image.shape}")
    roi, liver, from_mask = lesion_regions(
        image.shape[1:],
        mask=mask,
        lesion_center=lesion_center,
        body=body,
        spacing=spacing,
        radius_mm=radius_mm,
    )
    sp = _spacing3(spacing)
    depth = ndimage.distance_transform_edt(np.pad(roi, 1), sampling=sp)[1:-1, 1:-1, 1:-1]
    r_eq = (3 * roi.sum() * np.prod(sp) / (4 * math.pi)) ** (1 / 3)
    rim = roi & (depth <= max(sp.min(), r_eq / 3))
    core = roi & ~rim
    out: dict[str, float] = {}
    for s, name in enumerate(sequences):
        vals = {f: float("nan") for f in INTENSITY_FEATURES}
        if bool(available[s]) and roi.any():
            x = image[s][roi]
            vals["mean"], vals["std"] = float(x.mean()), float(x.std())
            vals["p10"], vals["p50"], vals["p90"] = (float(v) for v in np.percentile(x, [10, 50, 90]))
            if x.std() > 1e-8:
                vals["skew"], vals["kurtosis"] = float(stats.skew(x)), float(stats.kurtosis(x))
            else:
                vals["skew"] = vals["kurtosis"] = 0.0
            if core.any() and rim.any():
                vals["rim_minus_core"] = float(image[s][rim].mean() - image[s][core].mean())
            if liver.any():
                ref = float(image[s][liver].mean())
                vals["lesion_minus_liver"] = vals["mean"] - ref
                vals["lesion_liver_contrast"] = (vals["mean"] - ref) / (abs(vals["mean"]) + abs(ref) + 1e-6)
        out.update({f"{name}_{f}": v for f, v in vals.items()})
    shp = shape_features(roi, sp) if from_mask else {f: float("nan") for f in SHAPE_FEATURES}
    out.update({f"shape_{f}": v for f, v in shp.items()})
    return out


def radiomics_table(
    samples: Sequence[dict[str, Any]],
    sequences: Sequence[str],
    cases: Sequence[str],
    *,
    spacing: float | Sequence[float] = 1.0,
    radius_mm: float = 10.0,
) -> pd.DataFrame:
    """Features of several preprocessed samples (``preprocess_case`` dicts) as a table with ``case``."""
    rows = []
    for case, smp in zip(cases, samples):
        feats = radiomics_features(
            np.asarray(smp["image"]),
            np.asarray(smp["available"]),
            sequences,
            mask=None if smp.get("mask") is None else np.asarray(smp["mask"]),
            lesion_center=smp.get("lesion_center"),
            body=smp.get("body"),
            spacing=spacing,
            radius_mm=radius_mm,
        )
        rows.append({"case": case, **feats})
    return pd.DataFrame(rows, columns=["case", *radiomics_feature_names(sequences)])


def radiomics_feature_fn(config: Any = None, *, radius_mm: float = 10.0, cache_dir: Any = None) -> Any:
    """A feature function for :func:`mrfound.finetune.probe.extract_protocol_features`.

    Each case is preprocessed once onto its common grid (``mrfound.data.preprocess``, cached in
    ``cache_dir`` when given); the features of each protocol use only the sequences it keeps (the
    others are NaN, imputed by the probe).

    Args:
        config: ``PreprocessConfig`` (default settings when ``None``).
        radius_mm: ROI radius without a mask.
        cache_dir: Preprocessing cache folder.
    """

    def fn(manifest: Any, keep: Mapping[str, Sequence[str]]) -> dict[str, pd.DataFrame]:
        from tqdm.auto import tqdm

        from mrfound.data.dataset import MRDataset

        ds = MRDataset(manifest, config, mode="full", cache_dir=cache_dir)
        seqs = ds.vocabulary.sequences
        spacing = ds.config.spacing
        rows: dict[str, list[dict[str, Any]]] = {p: [] for p in keep}
        for i, case in enumerate(tqdm(manifest.cases, desc="radiomics", disable=None, leave=False)):
            smp = ds.preprocessed(i)
            avail = np.asarray(smp["available"], bool)
            for p, k in keep.items():
                a = avail & np.array([s in set(k) for s in seqs])
                if not a.any():
                    continue
                mask = smp.get("mask")
                feats = radiomics_features(
                    smp["image"],
                    a,
                    seqs,
                    mask=None if mask is None else np.asarray(mask),
                    lesion_center=smp.get("lesion_center"),
                    body=smp.get("body"),
                    spacing=spacing,
                    radius_mm=radius_mm,
                )
                rows[p].append({"case": case.case, **feats})
        names = ["case", *radiomics_feature_names(seqs)]
        return {p: pd.DataFrame(r, columns=names) for p, r in rows.items()}

    return fn
