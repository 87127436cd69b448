"""Montage of lesion signatures: one row per class, one column per sequence, centred on the lesion.

Every panel is an axial plane through the lesion centre, resampled from the sequence's own grid through
its affine (coronal acquisitions are reformatted), windowed relative to the surrounding liver so that
"high" and "low" read the same way in every sequence. The last column shows the mask (liver, target,
other lesions). Works on any manifest with masks and lesion coordinates, not only on the phantom.
"""

from __future__ import annotations

import csv
import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mrfound.data.phantom.measure import lesion_statistics, load_case_images, sample_world
from mrfound.data.sequences import CLASSES, SEQUENCES

WINDOW_MAX: dict[str, float] = {"t2": 3.0, "dwi": 2.6}
"""Upper display window as a multiple of the liver median (default 2.2): cysts saturate on T2."""


@dataclass
class PreviewRow:
    """One montage row: a class label and its case."""

    title: str
    images: Mapping[str, tuple[np.ndarray, np.ndarray]]
    mask: tuple[np.ndarray, np.ndarray] | None
    lesion_xyz: tuple[float, float, float]
    diameter_mm: float


def axial_plane(array: np.ndarray, affine: np.ndarray, centre, half_mm: float, pixel_mm: float = 0.8,
                order: int = 1) -> np.ndarray:
    """Axial (R-L x A-P) plane through ``centre``, displayed radiologically (patient right on the left,
    anterior up)."""
    n = int(round(2 * half_mm / pixel_mm)) + 1
    xs = centre[0] + np.linspace(half_mm, -half_mm, n)  # image column: patient right (+x) -> left
    ys = centre[1] + np.linspace(half_mm, -half_mm, n)  # image row: anterior (+y) at the top
    X, Y = np.meshgrid(xs, ys)  # rows = y, columns = x
    pts = np.stack([X.ravel(), Y.ravel(), np.full(X.size, centre[2])], axis=1)
    return sample_world(array, affine, pts, order=order).reshape(n, n)


def montage(rows: Sequence[PreviewRow], path: str | os.PathLike, sequences: Sequence[str] = SEQUENCES,
            title: str = "") -> Path:
    """Draw the montage PNG (matplotlib Agg) and write it atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    from mrfound.utils.io import atomic_write_with

    ncol = len(sequences) + 1
    fig, axes = plt.subplots(len(rows), ncol, figsize=(1.55 * ncol, 1.62 * len(rows) + 0.5), squeeze=False)
    mask_cmap = ListedColormap(["black", "#4a6a8a", "#ffcc33", "#ff6655"])
    for r, row in enumerate(rows):
        half = float(np.clip(1.1 * row.diameter_mm, 30.0, 75.0))
        stats = (lesion_statistics(row.images, row.mask[0], row.mask[1]) if row.mask is not None else {})
        for c, seq in enumerate(sequences):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if seq not in row.images:
                ax.set_facecolor("#303030")
                ax.text(0.5, 0.5, "missing", color="#bbbbbb", ha="center", va="center",
                        transform=ax.transAxes, fontsize=7)
            else:
                arr, aff = row.images[seq]
                plane = axial_plane(arr, aff, row.lesion_xyz, half)
                liver = stats.get(seq, {}).get("liver", float("nan"))
                if not np.isfinite(liver) or liver <= 0:
                    liver = float(np.nanpercentile(plane, 60)) or 1.0
                ax.imshow(np.nan_to_num(plane / liver), cmap="gray", vmin=0.0, vmax=WINDOW_MAX.get(seq, 2.2),
                          interpolation="bilinear")
                ratio = stats.get(seq, {}).get("ratio", float("nan"))
                if np.isfinite(ratio):
                    ax.text(0.03, 0.04, f"{ratio:.2f}", color="yellow", fontsize=6, transform=ax.transAxes,
                            bbox={"facecolor": "black", "alpha": 0.6, "pad": 1, "linewidth": 0})
            if r == 0:
                ax.set_title(seq, fontsize=9)
            if c == 0:
                ax.set_ylabel(row.title, fontsize=8)
        ax = axes[r, ncol - 1]
        ax.set_xticks([])
        ax.set_yticks([])
        if row.mask is not None:
            plane = axial_plane(row.mask[0], row.mask[1], row.lesion_xyz, half, order=0)
            ax.imshow(np.nan_to_num(plane), cmap=mask_cmap, vmin=0, vmax=3, interpolation="nearest")
        if r == 0:
            ax.set_title("mask", fontsize=9)
    fig.suptitle(title or "lesion signatures (axial, lesion-centred; window relative to liver; "
                 "yellow: lesion/liver median)", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    path = Path(path)
    atomic_write_with(path, lambda p: fig.savefig(p, dpi=110, format="png"))
    plt.close(fig)
    return path


def _row_from_case(case, title: str) -> PreviewRow:
    return PreviewRow(title=title, images=case.images, mask=case.mask, lesion_xyz=case.lesion_xyz,
                      diameter_mm=case.lesion_diameter_mm)


def typicality(stats: Mapping[str, Mapping[str, float]], cls: str,
               signatures: Mapping | None = None) -> float:
    """Mean squared log distance between measured lesion/liver ratios and the table's core means
    (lower = more typical of ``cls``); sequences without a measurement are skipped."""
    from mrfound.data.phantom.lesions import SIGNATURES

    sig = (signatures or SIGNATURES)[cls]
    expected = {seq: comps["core"][0] for seq, comps in sig["signal"].items()}
    geo = sig.get("geometry", {})
    if "t1_in" in expected:  # opposed phase: in-phase ratio times the drop of typical fat
        ff = geo.get("fat_fraction", (0.0, 0.0))[0] if geo.get("p_fat", 0.0) >= 0.5 else 0.0
        expected["t1_opp"] = expected["t1_in"] * abs(1.0 - 2.0 * ff)
    d = []
    for seq, st in stats.items():
        r = st.get("ratio", float("nan"))
        if seq in expected and np.isfinite(r) and r > 0:
            d.append((np.log(r) - np.log(expected[seq])) ** 2)
    return float(np.mean(d)) if d else float("inf")


def cohort_preview(manifest: str | os.PathLike, path: str | os.PathLike, *, seed: int = 0, config=None,
                   classes: Sequence[str] = CLASSES, candidates: int = 8,
                   max_typicality: float = 0.04) -> Path:
    """Montage of a written phantom cohort: per class, its most typical labelled case.

    Among (up to ``candidates``) complete labelled exams of a class, preferring lesions of at least
    2 cm, the one whose measured lesion/liver ratios are closest to the signature table is shown, so
    the montage reads like a textbook figure while the cohort keeps its full variation. A class with no
    complete exam in the cohort close enough to the table (mean squared log ratio error above
    ``max_typicality``; small cohorts, partial protocols) gets a textbook case simulated in memory at a
    complete centre (3.5-5.5 cm lesion, 30 % of the usual variation), marked "(extra, textbook)".
    """
    from mrfound.data.phantom.cohort import PhantomConfig, simulate_case

    manifest = Path(manifest)
    root = manifest.parent
    with open(manifest, newline="", encoding="utf-8") as f:
        table = list(csv.DictReader(f))
    config = config or PhantomConfig()
    pools: dict[str, list[dict]] = {}
    for row in table:
        lab = row.get("label") or ""
        has_xyz = all(row.get(c) for c in ("lesion_x", "lesion_y", "lesion_z"))
        if lab in classes and row.get("mask") and has_xyz:
            pools.setdefault(lab, []).append(row)
    rows = []
    for k, cls in enumerate(classes):
        # complete exams only: a montage row with holes shows less of the signature
        pool = [r for r in pools.get(cls, []) if all(r.get(s) for s in SEQUENCES)]
        pool.sort(key=lambda r: float(r.get("lesion_diameter_mm") or 30.0) < 20.0)
        best = None
        for row in pool[:candidates]:
            images, mask, aff = load_case_images(row, root, SEQUENCES)
            score = typicality(lesion_statistics(images, mask, aff), cls, config.signatures)
            if best is None or score < best[0]:
                best = (score, row, images, mask, aff)
        if best is not None and best[0] <= max_typicality:
            _, row, images, mask, aff = best
            xyz = tuple(float(row[c]) for c in ("lesion_x", "lesion_y", "lesion_z"))
            rows.append(PreviewRow(f"{cls}\n{row['case']} {row['center']}", images, (mask, aff), xyz,
                                   float(row.get("lesion_diameter_mm") or 30.0)))
        else:
            complete = next((c for c in _centers(config) if len(c.sequences) == len(SEQUENCES)), None)
            extra = dataclasses.replace(config, textbook=True, p_missing=0.0,
                                        variation=min(config.variation, 0.3), diameter_range=(35.0, 55.0))
            case = simulate_case(10_000_000 + k, seed, extra, cls=cls,
                                 center=complete.name if complete else "uni_3t")
            rows.append(_row_from_case(case, f"{cls}\n(extra, textbook) {case.center}"))
    return montage(rows, path)


def _centers(config):
    from mrfound.data.phantom.acquisition import get_centers

    return get_centers(config.centers)
