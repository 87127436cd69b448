"""Anatomy of the phantom: tissue labels on a world grid and their signal in each sequence.

Two sources of anatomy:

* :func:`synthetic_anatomy`: an upper-abdomen phantom drawn from a subject seed: body outline with
  subcutaneous fat and muscle wall, liver (smooth random shape in the right upper quadrant, clipped by
  the diaphragm dome and the body wall), branching portal and hepatic venous trees, IVC, aorta, spleen,
  stomach with an air-fluid level, gallbladder, kidneys (cortex and medulla), spine with discs,
  paraspinal muscles, lung bases and the heart above the diaphragm, bowel loops in visceral fat.
* :func:`label_map_anatomy`: real organ label maps (e.g. CHAOS: 1 liver, 2/3 kidneys, 4 spleen), with
  the body outline and air (lungs, bowel gas) from the companion image when one is found. Only the
  contrast is simulated.

Signals are relative to liver parenchyma (= 1) in each sequence; the acquisition model adds the
scanner's arbitrary scale. The values follow typical relative intensities of abdominal MRI at 1.5-3 T
(Elsayes et al., RadioGraphics 2017; Hussain & Sitton, "Liver MRI", 2nd ed.).
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mrfound.data.phantom.acquisition import WorldGrid, smooth_noise
from mrfound.errors import ConfigError

# ------------------------------------------------------------------------------------------------ tissues
TISSUES: tuple[str, ...] = (
    "air", "subcut_fat", "muscle", "visceral_fat", "bowel", "liver", "portal_vein", "hepatic_vein", "ivc",
    "aorta", "spleen", "kidney_cortex", "kidney_medulla", "marrow", "disc", "csf", "gallbladder",
    "stomach_fluid", "lung", "heart",
)
"""Tissue classes of the world label map (index = label value)."""
T = {name: i for i, name in enumerate(TISSUES)}

# Signal relative to liver (= 1) per sequence. DWI: ratio at b = 800 s/mm^2; other b-values through the
# ADC below. t1_in/t1_opp come from the water/fat pairs (in = W + F, opposed = |W - F|), which also
# yields the India-ink artefact at fat-water boundaries. Post-contrast values are for late arterial /
# portal venous / 3-min delayed phases.
TISSUE_SIGNAL: dict[str, dict[str, float]] = {
    "t2": {"air": 0.0, "subcut_fat": 0.35, "muscle": 0.75, "visceral_fat": 0.35, "bowel": 1.7, "liver": 1.0,
           "portal_vein": 0.35, "hepatic_vein": 0.35, "ivc": 0.4, "aorta": 0.25, "spleen": 1.75,
           "kidney_cortex": 1.9, "kidney_medulla": 2.4, "marrow": 0.8, "disc": 2.3, "csf": 4.0,
           "gallbladder": 4.3, "stomach_fluid": 3.8, "lung": 0.05, "heart": 0.3},
    "dwi": {"air": 0.0, "subcut_fat": 0.06, "muscle": 0.5, "visceral_fat": 0.06, "bowel": 0.9, "liver": 1.0,
            "portal_vein": 0.1, "hepatic_vein": 0.1, "ivc": 0.1, "aorta": 0.08, "spleen": 2.0,
            "kidney_cortex": 1.7, "kidney_medulla": 1.8, "marrow": 0.55, "disc": 0.9, "csf": 0.6,
            "gallbladder": 0.6, "stomach_fluid": 0.5, "lung": 0.03, "heart": 0.05},
    "t1_pre": {"air": 0.0, "subcut_fat": 0.15, "muscle": 0.62, "visceral_fat": 0.15, "bowel": 0.6,
               "liver": 1.0, "portal_vein": 0.5, "hepatic_vein": 0.5, "ivc": 0.5, "aorta": 0.5,
               "spleen": 0.75, "kidney_cortex": 0.72, "kidney_medulla": 0.6, "marrow": 0.35, "disc": 0.45,
               "csf": 0.25, "gallbladder": 0.35, "stomach_fluid": 0.3, "lung": 0.03, "heart": 0.5},
    "t1_art": {"air": 0.0, "subcut_fat": 0.15, "muscle": 0.7, "visceral_fat": 0.15, "bowel": 1.1,
               "liver": 1.0, "portal_vein": 1.9, "hepatic_vein": 0.45, "ivc": 0.6, "aorta": 4.0,
               "spleen": 1.6, "kidney_cortex": 2.8, "kidney_medulla": 0.9, "marrow": 0.5, "disc": 0.45,
               "csf": 0.25, "gallbladder": 0.3, "stomach_fluid": 0.3, "lung": 0.03, "heart": 3.0},
    "t1_pv": {"air": 0.0, "subcut_fat": 0.12, "muscle": 0.55, "visceral_fat": 0.12, "bowel": 1.0,
              "liver": 1.0, "portal_vein": 1.9, "hepatic_vein": 1.7, "ivc": 1.6, "aorta": 1.8, "spleen": 1.05,
              "kidney_cortex": 1.6, "kidney_medulla": 1.5, "marrow": 0.45, "disc": 0.5, "csf": 0.2,
              "gallbladder": 0.25, "stomach_fluid": 0.25, "lung": 0.03, "heart": 1.7},
    "t1_del": {"air": 0.0, "subcut_fat": 0.12, "muscle": 0.55, "visceral_fat": 0.12, "bowel": 0.9,
               "liver": 1.0, "portal_vein": 1.3, "hepatic_vein": 1.25, "ivc": 1.25, "aorta": 1.3,
               "spleen": 0.95, "kidney_cortex": 1.3, "kidney_medulla": 1.6, "marrow": 0.45, "disc": 0.6,
               "csf": 0.2, "gallbladder": 0.25, "stomach_fluid": 0.25, "lung": 0.03, "heart": 1.3},
}

T2_NO_FAT_SAT: dict[str, float] = {"subcut_fat": 1.6, "visceral_fat": 1.6, "marrow": 1.3}
"""T2 values that change without fat suppression (plain single-shot fast spin echo)."""

DUAL_ECHO_WATER_FAT: dict[str, tuple[float, float]] = {
    "air": (0.0, 0.0), "subcut_fat": (0.08, 1.75), "muscle": (0.6, 0.0), "visceral_fat": (0.08, 1.75),
    "bowel": (0.7, 0.1), "liver": (1.0, 0.0), "portal_vein": (0.9, 0.0), "hepatic_vein": (0.8, 0.0),
    "ivc": (0.8, 0.0), "aorta": (1.0, 0.0), "spleen": (0.8, 0.0), "kidney_cortex": (0.75, 0.0),
    "kidney_medulla": (0.6, 0.0), "marrow": (0.45, 0.65), "disc": (0.5, 0.0), "csf": (0.3, 0.0),
    "gallbladder": (0.4, 0.0), "stomach_fluid": (0.3, 0.0), "lung": (0.03, 0.0), "heart": (0.9, 0.0),
}
"""In-phase T1 (water, fat) signal pairs; the liver's pair is replaced by its fat fraction per case."""

TISSUE_ADC: dict[str, float] = {
    "liver": 1.1, "spleen": 0.8, "kidney_cortex": 1.9, "kidney_medulla": 2.0, "muscle": 1.4, "bowel": 1.6,
    "csf": 3.0, "gallbladder": 3.0, "stomach_fluid": 3.0, "disc": 1.8, "marrow": 0.6,
}
"""Apparent diffusion coefficients (10^-3 mm^2/s); tissues not listed keep their b=800 ratio."""


def tissue_lut(seq: str, *, b_value: float = 800.0, t2_fat_sat: bool = True, liver_adc: float = 1.1,
               arterial_timing: float = 1.0) -> np.ndarray:
    """Signal of every tissue label in ``seq`` (relative to liver), as a lookup table.

    Args:
        seq: ``t2``, ``dwi``, ``t1_pre``, ``t1_art``, ``t1_pv`` or ``t1_del`` (dual echo: see
            :func:`dual_echo_luts`).
        b_value: DWI b-value; ratios follow ``ratio_800 * exp(-(b - 800) * (ADC - ADC_liver))``.
        t2_fat_sat: Fat-suppressed T2.
        liver_adc: This subject's liver ADC (10^-3 mm^2/s).
        arterial_timing: 0 early arterial (portal vein not yet opacified, aorta brightest) .. 1 late.
    """
    table = dict(TISSUE_SIGNAL[seq])
    if seq == "t2" and not t2_fat_sat:
        table.update(T2_NO_FAT_SAT)
    if seq == "dwi":
        for name, adc in TISSUE_ADC.items():
            table[name] *= math.exp(-(b_value - 800.0) * 1e-3 * (adc - liver_adc))
    if seq == "t1_art":
        t = float(np.clip(arterial_timing, 0.0, 1.4))
        table["portal_vein"] = 0.5 + 1.4 * min(t, 1.0)
        table["aorta"] = 4.8 - 1.0 * t
        table["kidney_medulla"] = 0.7 + 0.4 * t
        table["hepatic_vein"] = 0.45 + 0.5 * max(t - 0.9, 0.0)
    return np.array([table[name] for name in TISSUES], dtype=np.float32)


def dual_echo_luts(liver_fat_fraction: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """(water, fat) lookup tables of the in-phase T1 signal, with the subject's liver fat fraction."""
    pairs = dict(DUAL_ECHO_WATER_FAT)
    pairs["liver"] = (1.0 - liver_fat_fraction, liver_fat_fraction)
    water = np.array([pairs[n][0] for n in TISSUES], dtype=np.float32)
    fat = np.array([pairs[n][1] for n in TISSUES], dtype=np.float32)
    return water, fat


# ----------------------------------------------------------------------------------------------- anatomy
@dataclass
class Anatomy:
    """A subject's anatomy on the world grid.

    Attributes:
        grid: The world grid.
        labels: uint8 tissue labels (:data:`TISSUES`).
        liver: bool liver envelope (parenchyma + intrahepatic vessels), the mask's label 1.
        fov_centre: World point the scanner FOV is centred on (body centre in-plane, liver in z).
        source: ``"synthetic"`` or the label-map file used.
        textures: Smooth unit-variance fields (``liver``, ``spleen_bands``) for parenchymal texture.
    """

    grid: WorldGrid
    labels: np.ndarray
    liver: np.ndarray
    fov_centre: np.ndarray
    source: str = "synthetic"
    textures: dict[str, np.ndarray] = field(default_factory=dict)


def _axes(grid: WorldGrid) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x, y, z = (grid.coords(w) for w in range(3))
    return x[:, None, None], y[None, :, None], z[None, None, :]


def _box(grid: WorldGrid, lo, hi) -> tuple[slice, slice, slice]:
    """Slices of the grid nodes inside the world box [lo, hi] (clipped to the grid)."""
    out = []
    for w in range(3):
        a = int(math.floor((lo[w] - grid.origin[w]) / grid.spacing))
        b = int(math.ceil((hi[w] - grid.origin[w]) / grid.spacing)) + 1
        out.append(slice(max(a, 0), max(min(b, grid.shape[w]), 0)))
    return tuple(out)  # type: ignore[return-value]


def _rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    """Small random rotation (Rodrigues) of at most ``max_deg`` degrees."""
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis) + 1e-9
    ang = math.radians(rng.uniform(-max_deg, max_deg))
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + math.sin(ang) * k + (1 - math.cos(ang)) * k @ k


def _ellipsoid_field(grid: WorldGrid, sl, centre, radii, rot: np.ndarray | None = None) -> np.ndarray:
    """Normalised ellipsoid radius (<1 inside) on the sub-box ``sl``."""
    x = grid.coords(0)[sl[0]] - centre[0]
    y = grid.coords(1)[sl[1]] - centre[1]
    z = grid.coords(2)[sl[2]] - centre[2]
    if rot is None:
        return np.sqrt((x[:, None, None] / radii[0]) ** 2 + (y[None, :, None] / radii[1]) ** 2
                       + (z[None, None, :] / radii[2]) ** 2)
    r = rot.T  # world -> body frame
    out = np.zeros((x.size, y.size, z.size), dtype=np.float32)
    for i in range(3):
        u = (r[i, 0] * x[:, None, None] + r[i, 1] * y[None, :, None] + r[i, 2] * z[None, None, :]) / radii[i]
        out += u * u
    return np.sqrt(out)


def _paint_ellipsoid(grid: WorldGrid, labels: np.ndarray, label: int, centre, radii, rot=None,
                     where: np.ndarray | None = None, only_on: tuple[int, ...] | None = None) -> np.ndarray:
    """Set ``label`` inside an ellipsoid; returns the boolean full-grid mask painted."""
    ext = max(radii) * 1.02
    sl = _box(grid, np.asarray(centre) - ext, np.asarray(centre) + ext)
    inside = _ellipsoid_field(grid, sl, centre, radii, rot) < 1.0
    sub = labels[sl]
    if only_on is not None:
        inside &= np.isin(sub, only_on)
    if where is not None:
        inside &= where[sl]
    sub[inside] = label
    full = np.zeros(labels.shape, dtype=bool)
    full[sl] = inside
    return full


def _segment_distance(grid: WorldGrid, sl, p0: np.ndarray, p1: np.ndarray) -> np.ndarray:
    x = grid.coords(0)[sl[0]][:, None, None] - p0[0]
    y = grid.coords(1)[sl[1]][None, :, None] - p0[1]
    z = grid.coords(2)[sl[2]][None, None, :] - p0[2]
    d = p1 - p0
    L2 = float(d @ d) or 1e-9
    t = np.clip((x * d[0] + y * d[1] + z * d[2]) / L2, 0.0, 1.0)
    return np.sqrt((x - t * d[0]) ** 2 + (y - t * d[1]) ** 2 + (z - t * d[2]) ** 2)


def _grow_tree(rng: np.random.Generator, root: np.ndarray, direction: np.ndarray, length: float,
               radius: float, depth: int, inside) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """Branching vessel segments (start, end, radius); a branch stops where it would leave the organ."""
    segs: list[tuple[np.ndarray, np.ndarray, float]] = []
    stack = [(root, direction / (np.linalg.norm(direction) + 1e-9), length, radius, depth)]
    while stack:
        p0, d, ln, r, k = stack.pop()
        p1 = p0 + d * ln
        # shorten a branch until its end lies in the organ (or give up)
        for _ in range(3):
            if inside(p1):
                break
            ln *= 0.6
            p1 = p0 + d * ln
        else:
            continue
        segs.append((p0, p1, r))
        if k <= 0 or r < 1.6:
            continue
        perp = np.cross(d, rng.normal(size=3))
        perp /= np.linalg.norm(perp) + 1e-9
        for sgn in (1.0, -1.0):
            ang = math.radians(rng.uniform(22, 48))
            nd = math.cos(ang) * d + sgn * math.sin(ang) * perp + rng.normal(0, 0.12, 3)
            nd /= np.linalg.norm(nd)
            stack.append((p1, nd, ln * rng.uniform(0.62, 0.82), r * rng.uniform(0.66, 0.78), k - 1))
    return segs


def _paint_tree(grid: WorldGrid, labels: np.ndarray, label: int, segs, allowed: np.ndarray | None,
                protect: tuple[int, ...] = ()) -> None:
    for p0, p1, r in segs:
        lo = np.minimum(p0, p1) - r - grid.spacing
        hi = np.maximum(p0, p1) + r + grid.spacing
        sl = _box(grid, lo, hi)
        if any(s.stop <= s.start for s in sl):
            continue
        m = _segment_distance(grid, sl, p0, p1) < r + 0.35 * grid.spacing
        if allowed is not None:
            m &= allowed[sl]
        sub = labels[sl]
        if protect:
            m &= ~np.isin(sub, protect)
        sub[m] = label


def _inside_fn(grid: WorldGrid, mask: np.ndarray):
    def inside(p: np.ndarray) -> bool:
        i = np.round(grid.index_of(p)).astype(int)
        if np.any(i < 0) or np.any(i >= np.array(grid.shape)):
            return False
        return bool(mask[tuple(i)])
    return inside


def _add_vessel_trees(grid: WorldGrid, labels: np.ndarray, liver: np.ndarray, rng: np.random.Generator,
                      hilum: np.ndarray, hv_root: np.ndarray, right: np.ndarray, ant: np.ndarray,
                      sup: np.ndarray) -> None:
    """Portal venous tree from the hilum and three hepatic veins draining to ``hv_root``."""
    inside = _inside_fn(grid, liver)
    pv = []
    for base, ln in ((right * 0.9 + sup * 0.25 - ant * 0.15, 45.0),
                     (-right * 0.8 + ant * 0.5 + sup * 0.3, 40.0)):
        pv += _grow_tree(rng, hilum, base + rng.normal(0, 0.1, 3), ln * rng.uniform(0.85, 1.15),
                         rng.uniform(5.5, 7.0), 3, inside)
    hv = []
    for base in (right * 0.8 + ant * 0.3 - sup * 0.5, ant * 0.8 - sup * 0.5,
                 -right * 0.6 + ant * 0.7 - sup * 0.3):
        hv += _grow_tree(rng, hv_root, base + rng.normal(0, 0.1, 3), rng.uniform(40, 60),
                         rng.uniform(4.5, 6.0), 2, inside)
    _paint_tree(grid, labels, T["hepatic_vein"], hv, liver)
    _paint_tree(grid, labels, T["portal_vein"], pv, liver)


def _superellipse(x: np.ndarray, y: np.ndarray, ax: float, ay: float, p: float) -> np.ndarray:
    return (np.abs(x / ax) ** p + np.abs(y / ay) ** p) ** (1.0 / p)


def synthetic_anatomy(rng: np.random.Generator, spacing: float = 2.0, fov_si: float = 164.0) -> Anatomy:
    """Draw an upper-abdomen anatomy (RAS: +x patient right, +y anterior, +z superior).

    Args:
        rng: The subject's generator (two exams of one subject share it, hence the anatomy).
        spacing: World grid spacing (mm).
        fov_si: Largest superior-inferior FOV of the protocols, to size the grid.
    """
    bx, by = rng.uniform(122, 140), rng.uniform(86, 102)
    pexp = rng.uniform(2.0, 2.6)
    fat = rng.uniform(8, 26)
    wall = rng.uniform(7, 10)
    cx, cy = bx - fat - wall, by - fat * 1.1 - wall
    ztop = 60.0
    zlo, zhi = ztop - 80.0 - fov_si / 2 - 14.0, ztop + 25.0
    n = (int(math.ceil(2 * (bx + 5) / spacing)), int(math.ceil(2 * (by + 5) / spacing)),
         int(math.ceil((zhi - zlo) / spacing)))
    grid = WorldGrid(origin=np.array([-(n[0] - 1) * spacing / 2, -(n[1] - 1) * spacing / 2, zlo]),
                     spacing=spacing, shape=n)
    X, Y, Z = _axes(grid)
    x2, y2 = X[:, :, 0], Y[:, :, 0]
    labels = np.zeros(n, dtype=np.uint8)

    # body wall (2D cross-section, constant along z)
    body = _superellipse(x2, y2, bx, by, pexp) <= 1.0
    inner_fat = _superellipse(x2, y2 - fat * 0.1, bx - fat, by - fat * 1.1, pexp) <= 1.0
    cavity2 = _superellipse(x2, y2 - fat * 0.1, cx, cy, pexp) <= 1.0
    sec = np.where(cavity2, T["visceral_fat"],
                   np.where(inner_fat, T["muscle"], np.where(body, T["subcut_fat"], 0)))
    labels[:] = sec.astype(np.uint8)[:, :, None]
    cavity = np.broadcast_to(cavity2[:, :, None], n)

    # spine, paraspinal muscles, aorta, IVC (vertical structures)
    sy = -cy * 0.72
    spine = (x2 ** 2 + (y2 - sy) ** 2) <= 17.0 ** 2
    canal = (x2 ** 2 + (y2 - sy + 27) ** 2) <= 8.0 ** 2
    lamina = (np.abs(x2) < 14) & (y2 < sy - 17) & (y2 > sy - 45) & ~canal
    para = (((np.abs(x2) - 33) / 24) ** 2 + ((y2 - sy + 32) / 17) ** 2) <= 1.0
    zc = grid.coords(2)
    disc_z = (np.mod(zc - rng.uniform(0, 32), 32.0) < 8.0)
    sp3 = np.broadcast_to(spine[:, :, None], n)
    labels[np.broadcast_to(para[:, :, None], n) & (labels > 0)] = T["muscle"]
    labels[np.broadcast_to(lamina[:, :, None], n)] = T["marrow"]
    labels[sp3] = T["marrow"]
    labels[sp3 & disc_z[None, None, :]] = T["disc"]
    labels[np.broadcast_to(canal[:, :, None], n)] = T["csf"]
    aorta_c = np.array([-14.0 + rng.normal(0, 3), sy + 27.0])
    ivc_c = np.array([22.0 + rng.normal(0, 3), sy + 33.0])

    # diaphragm dome: right dome higher; organs below it, lungs above it
    zd = (ztop - 26 * (x2 / cx - 0.35) ** 2 - 30 * (y2 / cy + 0.05) ** 2 + rng.normal(0, 3))[:, :, None]
    below = Z < zd - 2.0
    # liver: smooth union of ellipsoids deformed by a smooth random field.
    sl = _box(grid, [-cx, -cy, ztop - 175], [cx, cy, ztop + 5])
    # right lobe: long axis from the dome (medial) down to the lateral inferior tip; medial segment and
    # caudate; a flat left lobe anterior to the stomach
    tilt = math.radians(rng.uniform(18, 30))
    rot_y = np.array([[math.cos(tilt), 0, math.sin(tilt)], [0, 1, 0], [-math.sin(tilt), 0, math.cos(tilt)]])
    parts = [
        (np.array([cx * rng.uniform(0.5, 0.58), -cy * 0.05, ztop - rng.uniform(68, 78)]),
         np.array([cx * rng.uniform(0.4, 0.48), cy * rng.uniform(0.8, 0.92), rng.uniform(78, 90)]),
         rot_y @ _rotation(rng, 6)),
        (np.array([cx * rng.uniform(0.12, 0.22), cy * 0.15, ztop - rng.uniform(38, 48)]),
         np.array([cx * rng.uniform(0.3, 0.38), cy * rng.uniform(0.55, 0.68), rng.uniform(30, 38)]),
         _rotation(rng, 8)),
        (np.array([-cx * rng.uniform(0.12, 0.25), cy * 0.42, ztop - rng.uniform(30, 38)]),
         np.array([cx * rng.uniform(0.3, 0.42), cy * rng.uniform(0.32, 0.42), rng.uniform(18, 24)]),
         _rotation(rng, 10)),
    ]
    k = 0.2  # smooth-min width: gentle transitions between the parts
    f = None
    for c, r, rot in parts:
        e = _ellipsoid_field(grid, sl, c, r, rot)
        if f is None:
            f = e
        else:
            h = np.clip(0.5 + 0.5 * (e - f) / k, 0.0, 1.0)
            f = e * (1 - h) + f * h - k * h * (1 - h)
    sub_shape = f.shape
    f += 0.07 * smooth_noise(sub_shape, [s / 18.0 for s in sub_shape], rng)
    liver = np.zeros(n, dtype=bool)
    liver[sl] = (f < 1.0) & cavity[sl] & below[sl]

    # organs painted over visceral fat, then the liver on top, then structures that indent the liver
    ca, sa = math.cos(0.6), math.sin(0.6)
    spleen_rot = _rotation(rng, 10) @ np.array([[ca, -sa, 0], [sa, ca, 0], [0, 0, 1]])
    spleen_c = [-cx * rng.uniform(0.64, 0.74), -cy * rng.uniform(0.35, 0.5), ztop - rng.uniform(48, 62)]
    _paint_ellipsoid(grid, labels, T["spleen"], spleen_c, [rng.uniform(20, 26), rng.uniform(42, 55),
                                                           rng.uniform(45, 58)], spleen_rot,
                     where=cavity & below)
    st_c = np.array([-cx * 0.33, cy * 0.22, ztop - rng.uniform(40, 55)])
    st_r = [cx * 0.3, cy * 0.33, rng.uniform(38, 50)]
    stomach = _paint_ellipsoid(grid, labels, T["stomach_fluid"], st_c, st_r, _rotation(rng, 15),
                               where=cavity & below, only_on=(T["visceral_fat"],))
    labels[stomach & (Z > st_c[2] + st_r[2] * rng.uniform(0.2, 0.5))] = T["air"]
    for side, dz in ((1.0, -135.0), (-1.0, -122.0)):
        kc = [side * cx * 0.52, sy + 22.0, ztop + dz + rng.normal(0, 6)]
        kr = np.array([rng.uniform(24, 28), rng.uniform(22, 26), rng.uniform(48, 56)])
        krot = _rotation(rng, 14)
        _paint_ellipsoid(grid, labels, T["kidney_cortex"], kc, kr, krot, where=cavity)
        _paint_ellipsoid(grid, labels, T["kidney_medulla"], kc, kr * 0.55, krot, where=cavity)
    labels[liver & ~np.isin(labels, (T["kidney_cortex"], T["kidney_medulla"]))] = T["liver"]
    liver &= labels == T["liver"]
    gb_c = [cx * rng.uniform(0.08, 0.22), cy * rng.uniform(0.35, 0.5), ztop - rng.uniform(95, 115)]
    gb = _paint_ellipsoid(grid, labels, T["gallbladder"], gb_c, [rng.uniform(12, 17), rng.uniform(11, 15),
                                                                  rng.uniform(25, 35)], _rotation(rng, 25),
                          where=cavity)
    liver &= ~gb
    for c, r, lab in ((aorta_c, 11.0, T["aorta"]), (ivc_c, 12.0, T["ivc"])):
        tube = np.broadcast_to((((x2 - c[0]) ** 2 + (y2 - c[1]) ** 2) <= r * r)[:, :, None], n)
        labels[tube & (Z < zd + (40 if lab == T["ivc"] else -10))] = lab
        liver &= ~tube

    # lungs and heart above the diaphragm; bowel loops in the lower visceral fat
    thorax = cavity & (Z > zd + 3.0)
    labels[thorax] = T["lung"]
    labels[cavity & (Z >= zd - 2.0) & (Z <= zd + 3.0) & (labels == T["visceral_fat"])] = T["muscle"]
    _paint_ellipsoid(grid, labels, T["heart"], [-25.0, cy * 0.25, ztop + 48], [62, 48, 45], where=thorax)
    bowel_field = smooth_noise(n, [n[0] / 12, n[1] / 12, n[2] / 12], rng)
    lower = Z < ztop - 55 - 20 * X / cx
    labels[(labels == T["visceral_fat"]) & (bowel_field > -0.15) & lower] = T["bowel"]

    # vessels: portal tree from the hilum, hepatic veins to the IVC at the dome
    labels[liver] = T["liver"]
    right, ant, sup = np.array([1.0, 0, 0]), np.array([0, 1.0, 0]), np.array([0, 0, 1.0])
    hilum = np.array([cx * 0.18, cy * 0.0, ztop - 92.0])
    hv_root = np.array([ivc_c[0], ivc_c[1] + 8.0, ztop - 22.0])
    _add_vessel_trees(grid, labels, liver, rng, hilum, hv_root, right, ant, sup)
    # main portal vein trunk from the confluence (behind the pancreas head) to the hilum
    _paint_tree(grid, labels, T["portal_vein"], [(np.array([-5.0, sy + 45, ztop - 128]), hilum, 7.0)],
                cavity, protect=(T["aorta"], T["ivc"], T["marrow"]))
    liver_env = liver | (np.isin(labels, (T["portal_vein"], T["hepatic_vein"])) & _dilate_xy(liver))

    fov_centre = np.array([0.0, 0.0, 0.5 * (_zrange(liver, grid)[0] + _zrange(liver, grid)[1])])
    textures = {
        "liver": smooth_noise(n, [n[0] / 6, n[1] / 6, n[2] / 6], rng),
        "spleen_bands": smooth_noise(n, [n[0] / 3, n[1] / 3, n[2] / 10], rng),
    }
    return Anatomy(grid=grid, labels=labels, liver=liver_env, fov_centre=fov_centre, textures=textures)


def _dilate_xy(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    return ndimage.binary_dilation(mask, iterations=1)


def _zrange(mask: np.ndarray, grid: WorldGrid) -> tuple[float, float]:
    zs = np.flatnonzero(mask.any(axis=(0, 1)))
    if zs.size == 0:
        c = grid.origin[2] + grid.spacing * grid.shape[2] / 2
        return c, c
    return float(grid.coords(2)[zs[0]]), float(grid.coords(2)[zs[-1]])


# ------------------------------------------------------------------------------------- real label maps
def list_label_maps(folder: str | Path) -> list[Path]:
    """NIfTI label maps in ``folder`` (sorted); raises ConfigError when there are none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"--anatomy folder {folder} does not exist")
    files = sorted(p for p in folder.iterdir() if p.name.endswith((".nii", ".nii.gz")))
    if not files:
        raise ConfigError(f"--anatomy folder {folder} has no .nii/.nii.gz label maps")
    return files


def companion_image(label_path: Path) -> Path | None:
    """The image a label map belongs to: ``../images/<same id>*`` (CHAOS, nnU-Net and similar layouts)."""
    stem = re.sub(r"\.nii(\.gz)?$", "", label_path.name)
    key = re.sub(r"[_-]?(labels?|seg(mentation)?|mask|gt)$", "", stem, flags=re.I)
    for sub in ("images", "imagesTr", "image", "img"):
        d = label_path.parent.parent / sub
        if d.is_dir():
            hits = sorted(p for p in d.iterdir()
                          if p.name.startswith(key) and p.name.endswith((".nii", ".nii.gz")))
            if hits:
                return hits[0]
    return None


@functools.lru_cache(maxsize=4)
def _load_label_world(path: str, spacing: float, liver_label: int, kidney_labels: tuple[int, ...],
                      spleen_label: int) -> tuple:
    """Resample a label map (and its companion image's body/air) onto an RAS world grid. Cached."""
    import nibabel as nib
    from scipy import ndimage

    img = nib.load(path)
    lab = np.asarray(img.dataobj).astype(np.int16)
    if lab.ndim != 3:
        raise ConfigError(f"label map {path} is not 3D (shape {lab.shape})")
    aff = img.affine
    if not np.any(lab == liver_label):
        raise ConfigError(f"label map {path} has no liver (label {liver_label})")
    comp = companion_image(Path(path))
    body_src = air_src = None
    if comp is not None:
        im = nib.load(str(comp))
        if im.shape == lab.shape and np.allclose(im.affine, aff, atol=1e-3):
            a = np.asarray(im.dataobj, dtype=np.float32)
            a = ndimage.gaussian_filter(a, (1.0, 1.0, 0.0))
            thr = 0.12 * float(np.percentile(a, 99))
            body_src = a > thr
            body_src = ndimage.binary_closing(body_src, iterations=2)
            for k in range(body_src.shape[2]):
                body_src[:, :, k] = ndimage.binary_fill_holes(body_src[:, :, k])
            air_src = (a < 0.6 * thr) & body_src & (lab == 0)
    # world box: nonzero labels (or the body) plus a margin, in RAS
    src = body_src if body_src is not None else lab > 0
    idx = np.argwhere(src)
    corners = np.array([[i, j, k] for i in (idx[:, 0].min(), idx[:, 0].max()) for j in (idx[:, 1].min(),
                        idx[:, 1].max()) for k in (idx[:, 2].min(), idx[:, 2].max())], dtype=float)
    world = nib.affines.apply_affine(aff, corners)
    margin = np.array([6.0, 6.0, 6.0]) if body_src is not None else np.array([45.0, 45.0, 6.0])
    lo, hi = world.min(0) - margin, world.max(0) + margin
    liver_idx = np.argwhere(lab == liver_label)
    lz = nib.affines.apply_affine(aff, liver_idx)[:, 2]
    lo[2], hi[2] = max(lo[2], lz.min() - 45.0), min(hi[2], lz.max() + 30.0)
    shape = tuple(int(math.ceil((hi[w] - lo[w]) / spacing)) + 1 for w in range(3))
    grid = WorldGrid(origin=lo.copy(), spacing=spacing, shape=shape)
    sample = _world_sampler(aff, lab.shape, grid)

    organs = {"liver": lab == liver_label, "kidney": np.isin(lab, kidney_labels),
              "spleen": lab == spleen_label}
    probs = {k: sample(v) for k, v in organs.items()}
    if body_src is not None:
        body = sample(body_src) > 0.5
        air = sample(air_src) > 0.5
    else:  # no image: an elliptic body around the organs, no gas
        body = np.ones(shape, dtype=bool)
        air = np.zeros(shape, dtype=bool)
    return grid, probs, body, air


def _world_sampler(aff: np.ndarray, src_shape: tuple[int, ...], grid: WorldGrid):
    """Linear interpolation of arrays on the ``aff`` grid at the world grid's nodes.

    Axis-aligned source grids (any permutation/flip, the usual case) use separable weight matrices,
    which is ~20x faster than ``map_coordinates``; oblique ones fall back to it.
    """
    from scipy import ndimage

    from mrfound.data.phantom.acquisition import kernel_matrix

    m = aff[:3, :3]
    axis_aligned = all(np.count_nonzero(np.abs(m[:, a]) > 1e-6 * np.abs(m[:, a]).max()) == 1
                       for a in range(3))
    if axis_aligned:
        w_of = [int(np.argmax(np.abs(m[:, a]))) for a in range(3)]
        if sorted(w_of) == [0, 1, 2]:
            mats = []
            for a in range(3):
                w = w_of[a]
                idx = (grid.coords(w).astype(np.float64) - aff[w, 3]) / m[w, a]
                mats.append(kernel_matrix(idx, 0.0, 1.0, src_shape[a], 0.0))
            order = [w_of.index(k) for k in range(3)]

            def sample_sep(arr: np.ndarray) -> np.ndarray:
                v = arr.astype(np.float32)
                for a in range(3):
                    v = np.moveaxis(np.tensordot(mats[a], v, axes=([1], [a])), 0, a)
                return np.ascontiguousarray(np.transpose(v, order))

            return sample_sep
    inv = np.linalg.inv(aff)
    X, Y, Z = np.meshgrid(*(grid.coords(w) for w in range(3)), indexing="ij")
    vox = inv[:3, :3] @ np.stack([X.ravel(), Y.ravel(), Z.ravel()]) + inv[:3, 3:4]

    def sample_nd(arr: np.ndarray) -> np.ndarray:
        return ndimage.map_coordinates(arr.astype(np.float32), vox, order=1, mode="constant",
                                       cval=0.0).reshape(grid.shape)

    return sample_nd


def label_map_anatomy(path: str | Path, rng: np.random.Generator, spacing: float = 2.0, liver_label: int = 1,
                      kidney_labels: tuple[int, ...] = (2, 3), spleen_label: int = 4) -> Anatomy:
    """Anatomy from a real organ label map; body wall, spine, great vessels and hepatic vessels are drawn.

    Args:
        path: NIfTI label map (CHAOS convention by default: 1 liver, 2/3 kidneys, 4 spleen).
        rng: The subject's generator (vessel trees, fat thickness, textures).
        spacing: World grid spacing (mm).
    """
    from scipy import ndimage

    grid, probs, body, air = _load_label_world(str(path), float(spacing), liver_label, tuple(kidney_labels),
                                               spleen_label)
    n = grid.shape
    stack = np.stack([np.full(n, 0.5, np.float32), probs["liver"], probs["kidney"], probs["spleen"]])
    organ = np.argmax(stack, axis=0)
    labels = np.zeros(n, dtype=np.uint8)
    if not body.all():
        depth = ndimage.distance_transform_edt(body, sampling=grid.spacing)
        fat = rng.uniform(8, 22)
        labels[body] = T["visceral_fat"]
        labels[body & (depth < fat + 8)] = T["muscle"]
        labels[body & (depth < fat)] = T["subcut_fat"]
    else:
        labels[:] = T["visceral_fat"]
    labels[air] = T["lung"]
    liver = organ == 1
    kidney = organ == 2
    labels[organ == 3] = T["spleen"]
    labels[kidney] = T["kidney_cortex"]
    kdepth = ndimage.distance_transform_edt(kidney, sampling=grid.spacing)
    labels[kidney & (kdepth > 7.0)] = T["kidney_medulla"]
    labels[liver] = T["liver"]
    # spine and great vessels between the kidneys (heuristic), never over organs
    kid_idx = np.argwhere(kidney)
    liv_idx = np.argwhere(liver)
    lc = grid.origin + grid.spacing * liv_idx.mean(0)
    if kid_idx.size:
        kc = grid.origin + grid.spacing * kid_idx.mean(0)
        kx = grid.origin[0] + grid.spacing * kid_idx[:, 0]
        mid_x = 0.5 * (np.percentile(kx, 5) + np.percentile(kx, 95))
        sy = kc[1] - 5.0
    else:
        mid_x, sy = lc[0] - np.sign(lc[0]) * 60.0, lc[1] - 40.0
    right_sign = 1.0 if lc[0] >= mid_x else -1.0  # the liver lies on the patient's right
    x2 = grid.coords(0)[:, None]
    y2 = grid.coords(1)[None, :]
    free = np.isin(labels, (T["visceral_fat"], T["muscle"]))
    for c, r, lab in (((mid_x, sy), 17.0, T["marrow"]), ((mid_x, sy - 27.0), 8.0, T["csf"]),
                      ((mid_x - right_sign * 14.0, sy + 27.0), 11.0, T["aorta"]),
                      ((mid_x + right_sign * 22.0, sy + 33.0), 12.0, T["ivc"])):
        disc = np.broadcast_to((((x2 - c[0]) ** 2 + (y2 - c[1]) ** 2) <= r * r)[:, :, None], n)
        labels[disc & (free | (labels == T["lung"]))] = lab
    # hepatic vessels grown inside the real liver
    right = np.array([right_sign, 0.0, 0.0])
    ant, sup = np.array([0.0, 1.0, 0.0]), np.array([0.0, 0.0, 1.0])
    lz0, lz1 = _zrange(liver, grid)
    hilum = np.array([lc[0] - right_sign * 15.0, lc[1] + 5.0, lz0 + 0.35 * (lz1 - lz0)])
    hilum = _nearest_inside(grid, liver, hilum)
    hv_root = _nearest_inside(grid, liver, np.array([mid_x + right_sign * 22.0, sy + 45.0, lz1 - 20.0]))
    _add_vessel_trees(grid, labels, liver, rng, hilum, hv_root, right, ant, sup)
    liver_env = liver | (np.isin(labels, (T["portal_vein"], T["hepatic_vein"])) & _dilate_xy(liver))
    body_idx = np.argwhere(body.any(axis=2)) if not body.all() else np.argwhere(liver.any(axis=2))
    cxy = grid.origin[:2] + grid.spacing * 0.5 * (body_idx.min(0) + body_idx.max(0))
    fov_centre = np.array([cxy[0], cxy[1], 0.5 * (lz0 + lz1)])
    textures = {
        "liver": smooth_noise(n, [n[0] / 6, n[1] / 6, n[2] / 6], rng),
        "spleen_bands": smooth_noise(n, [n[0] / 3, n[1] / 3, n[2] / 10], rng),
    }
    return Anatomy(grid=grid, labels=labels, liver=liver_env, fov_centre=fov_centre, source=Path(path).name,
                   textures=textures)


def _nearest_inside(grid: WorldGrid, mask: np.ndarray, p: np.ndarray) -> np.ndarray:
    idx = np.argwhere(mask)
    q = grid.index_of(p)
    j = idx[np.argmin(((idx - q) ** 2).sum(1))]
    return grid.origin + grid.spacing * j
