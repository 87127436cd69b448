"""Focal liver lesions: the multi-sequence signature table (as data) and lesion rendering.

Each class of :data:`mrfound.CLASSES` has an entry in :data:`SIGNATURES` with

* ``table``: the typical appearance per sequence in words (the table of issue 3);
* ``signal``: per sequence, the signal of each lesion component relative to the surrounding liver as
  ``(mean, sd)``: a lesion draws ``mean * exp(sd * variation * z)``, ``z ~ N(0, 1)`` truncated at 2.5, so
  every magnitude varies per case. Components: ``core`` (lesion body), ``centre`` (necrosis/fibrosis,
  inner ``centre_radius``), ``rim`` (outer ``rim_width``), ``capsule`` (outermost ``capsule_mm``),
  ``scar`` (central stellate scar), ``nodules`` (discontinuous peripheral nodules), ``fill`` /
  ``filled`` (centripetal fill-in: outer fraction ``fill`` of the radius at value ``filled``), ``halo``
  (multiplier of the liver in a band ``halo_mm`` around the lesion: oedema or perfusion halo). DWI
  values are ratios at b = 800 s/mm^2 and follow the centre's b-value through the lesion ``adc``;
  t1_opp follows t1_in through the fat fraction (in = W + F, opposed = |W - F|);
* ``geometry``: size (diameter 1-8 cm), shape (lobulation, elongation, edge sharpness), internal
  heterogeneity, component sizes and presence probabilities, fat fraction, ADC, satellite lesions;
* ``variants``: atypical presentations with a probability (flash-filling haemangioma, hypovascular
  HCC, inflammatory adenoma, hypervascular metastasis), which override ``signal``/``geometry`` entries
  (and ``remove`` components);
* ``checks``: the table's directions as measurable statements on lesion/liver medians (see
  :mod:`.measure`), verified on written files by the tests: ``ratio>x``/``ratio<x`` (lesion), ``rim>centre``
  / ``centre>rim`` (inner rim band vs centre), ``edge>x`` (boundary shell: capsule), ``halo>x``
  (perilesional liver), ``drop``/``nodrop`` (opposed/in-phase ratio < 0.8 / > 0.88). Opposed-phase "low"
  is checked as "no drop": a steatotic liver itself darkens in opposed phase, so the lesion/liver ratio
  there rises.

Sources:
    - Chernyak V, et al. Liver Imaging Reporting and Data System (LI-RADS) version 2018: imaging of
      hepatocellular carcinoma in at-risk patients. Radiology 2018;289:816-830 (APHE non-rim, washout,
      enhancing capsule, intralesional fat, restricted diffusion, mild-moderate T2 hyperintensity).
    - Marrero JA, Ahmed M, Reddy KR. ACG clinical guideline: the diagnosis and management of focal
      liver lesions. Am J Gastroenterol 2014;109:1328-1347.
    - Silva AC, et al. MR imaging of hypervascular liver masses: a review of current techniques.
      RadioGraphics 2009;29:385-402 (FNH, adenoma, HCC, hypervascular metastases, flash-filling
      haemangioma).
    - Elsayes KM, et al. Focal hepatic lesions: diagnostic value of enhancement pattern approach with
      contrast-enhanced 3D gradient-echo MR imaging. RadioGraphics 2005;25:1299-1320; and Elsayes KM,
      et al. Imaging of focal hepatic lesions, RadioGraphics 2017 (target appearance, rim enhancement,
      peripheral washout, progressive/delayed central enhancement of cholangiocarcinoma).
    - Grazioli L, et al. Focal nodular hyperplasia: morphologic and functional information from MR
      imaging with gadobenate dimeglumine. Radiology 2001;221:731-739; Grazioli L, et al. Hepatic
      adenomas: imaging and pathologic findings. RadioGraphics 2001;21:877-894 (FNH central scar: T2
      bright, arterial dark, delayed enhancing; adenoma intracellular fat: opposed-phase signal drop).
    - Vilgrain V, et al. Imaging of atypical hemangiomas of the liver with pathologic correlation.
      RadioGraphics 2000;20:379-397 (peripheral nodular discontinuous enhancement, centripetal fill-in,
      flash filling, T2 "light bulb").
    - Mortele KJ, et al. The infected liver: radiologic-pathologic correlation. RadioGraphics
      2004;24:937-955 (abscess: restricted diffusion of pus, enhancing wall, perihepatic oedema and
      perfusion halo).
    - Chung YE, et al. Varying appearances of cholangiocarcinoma. RadioGraphics 2009;29:683-700.
    - Danet IM, et al. Spectrum of MRI appearances of untreated metastases of the liver. AJR
      2003;181:809-817 (perilesional rim, peripheral washout, target appearance).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from mrfound.data.phantom.acquisition import WorldGrid, smooth_noise

Magnitude = tuple[float, float]
"""(mean, relative sd) of a signal ratio or geometric quantity."""

DEFAULT_GEOMETRY: dict[str, object] = {
    "diameter_mm": (15.0, 35.0, 80.0),  # min, median, max (log-normal, truncated)
    "diameter_sd": 0.35,                # log-scale spread of the diameter
    "lobulation": (0.06, 0.04),         # amplitude of lobes (fraction of radius): round .. lobulated
    "elongation": 0.2,                  # up to this fraction shorter secondary axes
    "edge_mm": 1.5,                     # edge width (10-90 %): 0.4 sharp (cyst) .. 3 infiltrative
    "heterogeneity": 0.06,              # relative sd of the internal texture
    "texture_mm": 8.0,                  # correlation length of the internal texture
    "centre_radius": 0.45, "p_centre": 0.0,
    "rim_width": 0.2, "rim_min_mm": 4.0,  # a wall or rim is at least ~4 mm thick, also in small lesions
    "capsule_mm": 2.5, "p_capsule": 0.0,
    "halo_mm": 8.0, "p_halo": 0.0,
    "scar_radius": 0.2, "p_scar": 0.0, "scar_min_diameter_mm": 0.0,  # small lesions show no scar
    "fill_front": 0.15,                 # irregularity of the fill-in front
    "fat_fraction": (0.0, 0.0), "p_fat": 0.0,
    "adc": (1.1, 0.1),                  # 10^-3 mm^2/s
    "p_other": 0.15, "other_class": "same", "max_other": 3,
}

GEOMETRY_SPREAD: dict[str, float] = {"heterogeneity": 0.5, "edge_mm": 0.6, "texture_mm": 0.5}
"""Per-case log-normal spread of geometric quantities (others: 0.35), times ``variation``."""

SIGNATURES: dict[str, dict] = {
    "hcc": {
        "table": {"t2": "mildly high", "dwi": "high", "t1_in": "low", "t1_opp": "sometimes drops (fat)",
                  "t1_pre": "low", "t1_art": "strong, non-rim", "t1_pv": "washout (low)",
                  "t1_del": "washout + enhancing capsule rim"},
        "geometry": {"diameter_mm": (15.0, 35.0, 80.0), "lobulation": (0.07, 0.1), "edge_mm": 1.5,
                     "heterogeneity": 0.12, "texture_mm": 6.0, "capsule_mm": 2.5, "p_capsule": 0.7,
                     "fat_fraction": (0.15, 0.6), "p_fat": 0.3, "adc": (0.95, 0.3), "p_other": 0.15},
        "signal": {
            "t2": {"core": (1.35, 0.36)},
            "dwi": {"core": (1.7, 0.45)},
            "t1_in": {"core": (0.86, 0.15)},
            "t1_pre": {"core": (0.82, 0.15), "capsule": (0.75, 0.3)},
            "t1_art": {"core": (1.85, 0.45)},
            "t1_pv": {"core": (0.8, 0.15), "capsule": (1.15, 0.3)},
            "t1_del": {"core": (0.72, 0.15), "capsule": (1.45, 0.36)},
        },
        "variants": {"hypovascular": {"p": 0.12, "signal": {"t1_art": {"core": (1.0, 0.3)}}}},
        "checks": {"t2": ("ratio>1.1",), "dwi": ("ratio>1.25",), "t1_in": ("ratio<0.95",),
                   "t1_opp": ("ratio<1.0",), "t1_pre": ("ratio<0.92",), "t1_art": ("ratio>1.3",),
                   "t1_pv": ("ratio<0.93",), "t1_del": ("ratio<0.9", "edge>1.1")},
    },
    "icca": {
        "table": {"t2": "moderately high, central low (fibrosis)", "dwi": "high, target", "t1_in": "low",
                  "t1_opp": "low", "t1_pre": "low", "t1_art": "rim", "t1_pv": "progressive",
                  "t1_del": "central fill-in (delayed enhancement)"},
        "geometry": {"diameter_mm": (25.0, 50.0, 85.0), "lobulation": (0.16, 0.15), "edge_mm": 3.0,
                     "heterogeneity": 0.08, "texture_mm": 10.0, "centre_radius": 0.6, "p_centre": 1.0,
                     "rim_width": 0.25, "adc": (1.0, 0.3), "p_other": 0.15},
        "signal": {
            "t2": {"core": (1.8, 0.36), "centre": (1.0, 0.36)},
            "dwi": {"core": (1.8, 0.45), "centre": (0.95, 0.45)},
            "t1_in": {"core": (0.72, 0.3)},
            "t1_pre": {"core": (0.72, 0.24)},
            "t1_art": {"core": (0.85, 0.3), "centre": (0.65, 0.36), "rim": (1.45, 0.45)},
            "t1_pv": {"core": (1.0, 0.3), "centre": (0.82, 0.36), "rim": (1.2, 0.3)},
            "t1_del": {"core": (1.12, 0.3), "centre": (1.3, 0.36), "rim": (1.05, 0.24)},
        },
        "checks": {"t2": ("ratio>1.2", "rim>centre"), "dwi": ("ratio>1.15", "rim>centre"),
                   "t1_in": ("ratio<0.9",), "t1_opp": ("ratio<1.0", "nodrop"), "t1_pre": ("ratio<0.9",),
                   "t1_art": ("rim>centre",), "t1_pv": ("rim>centre",),
                   "t1_del": ("ratio>1.0", "centre>rim")},
    },
    "metastasis": {
        "table": {"t2": "moderately high", "dwi": "high", "t1_in": "low", "t1_opp": "low", "t1_pre": "low",
                  "t1_art": "thin rim", "t1_pv": "low centre, rim", "t1_del": "low, target"},
        "geometry": {"diameter_mm": (10.0, 25.0, 60.0), "lobulation": (0.1, 0.125), "edge_mm": 2.0,
                     "heterogeneity": 0.1, "texture_mm": 7.0, "centre_radius": 0.45, "p_centre": 0.35,
                     "rim_width": 0.22, "adc": (0.95, 0.3), "p_other": 0.55},
        "signal": {
            "t2": {"core": (1.75, 0.45), "centre": (2.4, 0.45)},
            "dwi": {"core": (1.9, 0.45), "centre": (1.5, 0.45)},
            "t1_in": {"core": (0.72, 0.3)},
            "t1_pre": {"core": (0.72, 0.24)},
            "t1_art": {"core": (0.7, 0.36), "rim": (1.5, 0.45)},
            "t1_pv": {"core": (0.6, 0.3), "rim": (1.05, 0.3)},
            "t1_del": {"core": (0.68, 0.3), "rim": (0.95, 0.3)},
        },
        "variants": {"hypervascular": {"p": 0.2, "signal": {"t1_art": {"core": (1.55, 0.45),
                                                                         "rim": (1.6, 0.45)}}}},
        "checks": {"t2": ("ratio>1.25",), "dwi": ("ratio>1.3",), "t1_in": ("ratio<0.9",),
                   "t1_opp": ("ratio<1.0", "nodrop"), "t1_pre": ("ratio<0.9",), "t1_art": ("rim>centre",),
                   "t1_pv": ("ratio<0.9", "rim>centre"), "t1_del": ("ratio<0.9", "rim>centre")},
    },
    "hemangioma": {
        "table": {"t2": "very high", "dwi": "high at low b (shine-through)", "t1_in": "low", "t1_opp": "low",
                  "t1_pre": "low", "t1_art": "peripheral nodular, discontinuous",
                  "t1_pv": "centripetal fill-in", "t1_del": "fills in, iso/high"},
        "geometry": {"diameter_mm": (10.0, 30.0, 85.0), "lobulation": (0.1, 0.125), "edge_mm": 1.0,
                     "heterogeneity": 0.05, "texture_mm": 8.0, "scar_radius": 0.18, "p_scar": 0.3,
                     "scar_min_diameter_mm": 50.0,
                     "adc": (1.75, 0.3), "p_other": 0.3},
        "signal": {
            "t2": {"core": (3.2, 0.45), "scar": (4.0, 0.3)},
            "dwi": {"core": (1.45, 0.45)},
            "t1_in": {"core": (0.62, 0.3)},
            "t1_pre": {"core": (0.62, 0.24)},
            "t1_art": {"core": (0.6, 0.3), "nodules": (2.3, 0.45)},
            "t1_pv": {"core": (0.65, 0.3), "fill": (0.5, 0.75), "filled": (1.5, 0.36), "scar": (0.6, 0.3)},
            "t1_del": {"core": (0.9, 0.3), "fill": (0.85, 0.36), "filled": (1.2, 0.3), "scar": (0.7, 0.3)},
        },
        "variants": {"flash_filling": {"p": 0.25, "max_diameter_mm": 25.0, "signal": {
            "t1_art": {"core": (1.7, 0.36)}, "t1_pv": {"core": (1.4, 0.3)}, "t1_del": {"core": (1.15, 0.24)}},
            "remove": {"t1_art": ("nodules",), "t1_pv": ("fill", "filled"), "t1_del": ("fill", "filled")}}},
        "checks": {"t2": ("ratio>2.2",), "dwi": ("ratio>1.1",), "t1_in": ("ratio<0.85",),
                   "t1_opp": ("ratio<0.95", "nodrop"), "t1_pre": ("ratio<0.85",), "t1_art": ("rim>centre",),
                   "t1_pv": ("rim>centre",), "t1_del": ("ratio>0.85",)},
    },
    "fnh": {
        "table": {"t2": "iso/slightly high, central scar high", "dwi": "iso", "t1_in": "iso", "t1_opp": "iso",
                  "t1_pre": "iso", "t1_art": "strong homogeneous, scar dark", "t1_pv": "iso",
                  "t1_del": "iso, scar enhances"},
        "geometry": {"diameter_mm": (20.0, 35.0, 70.0), "lobulation": (0.08, 0.1), "edge_mm": 1.0,
                     "heterogeneity": 0.04, "texture_mm": 8.0, "scar_radius": 0.28, "p_scar": 0.85,
                     "scar_min_diameter_mm": 25.0,
                     "adc": (1.2, 0.25), "p_other": 0.1},
        "signal": {
            "t2": {"core": (1.08, 0.12), "scar": (2.3, 0.45)},
            "dwi": {"core": (1.05, 0.12)},
            "t1_in": {"core": (0.98, 0.08)},
            "t1_pre": {"core": (0.96, 0.08), "scar": (0.7, 0.3)},
            "t1_art": {"core": (1.8, 0.3), "scar": (0.65, 0.36)},
            "t1_pv": {"core": (1.04, 0.1), "scar": (0.9, 0.3)},
            "t1_del": {"core": (1.0, 0.1), "scar": (1.45, 0.36)},
        },
        "checks": {"t2": ("ratio>0.95", "ratio<1.5", "centre>rim"), "dwi": ("ratio>0.85", "ratio<1.25"),
                   "t1_in": ("ratio>0.88", "ratio<1.12"), "t1_opp": ("ratio>0.88", "nodrop"),
                   "t1_pre": ("ratio>0.85", "ratio<1.12"), "t1_art": ("ratio>1.3", "rim>centre"),
                   "t1_pv": ("ratio>0.88", "ratio<1.15"),
                   "t1_del": ("ratio>0.88", "ratio<1.2", "centre>rim")},
    },
    "adenoma": {
        "table": {"t2": "iso/slightly high", "dwi": "iso/slightly high", "t1_in": "iso/slightly high",
                  "t1_opp": "clear drop (intracellular fat)", "t1_pre": "iso/high", "t1_art": "moderate",
                  "t1_pv": "iso/slightly low", "t1_del": "iso"},
        "geometry": {"diameter_mm": (20.0, 40.0, 80.0), "lobulation": (0.06, 0.1), "edge_mm": 1.2,
                     "heterogeneity": 0.08, "texture_mm": 8.0, "fat_fraction": (0.25, 0.6), "p_fat": 0.9,
                     "adc": (1.15, 0.25), "p_other": 0.2},
        "signal": {
            "t2": {"core": (1.15, 0.15)},
            "dwi": {"core": (1.12, 0.15)},
            "t1_in": {"core": (1.08, 0.12)},
            "t1_pre": {"core": (1.06, 0.12)},
            "t1_art": {"core": (1.45, 0.45)},
            "t1_pv": {"core": (0.95, 0.12)},
            "t1_del": {"core": (0.92, 0.12)},
        },
        "variants": {"inflammatory": {"p": 0.2, "geometry": {"p_fat": 0.0}, "signal": {
            "t2": {"core": (1.45, 0.36)}, "t1_art": {"core": (1.7, 0.45)}, "t1_pv": {"core": (1.08, 0.21)},
            "t1_del": {"core": (1.02, 0.18)}}}},
        "checks": {"t2": ("ratio>0.95", "ratio<1.5"), "dwi": ("ratio>0.9", "ratio<1.4"),
                   "t1_in": ("ratio>0.95",), "t1_opp": ("drop",), "t1_pre": ("ratio>0.95",),
                   "t1_art": ("ratio>1.15",), "t1_pv": ("ratio>0.8", "ratio<1.08"),
                   "t1_del": ("ratio>0.8", "ratio<1.1")},
    },
    "cyst": {
        "table": {"t2": "very high (fluid), sharp edge", "dwi": "low at high b", "t1_in": "very low",
                  "t1_opp": "very low", "t1_pre": "very low", "t1_art": "none", "t1_pv": "none",
                  "t1_del": "none"},
        "geometry": {"diameter_mm": (8.0, 18.0, 60.0), "lobulation": (0.02, 0.05), "elongation": 0.1,
                     "edge_mm": 0.4, "heterogeneity": 0.02, "texture_mm": 10.0, "adc": (3.1, 0.2),
                     "p_other": 0.4},
        "signal": {
            "t2": {"core": (3.6, 0.45)},
            "dwi": {"core": (0.5, 0.6)},
            "t1_in": {"core": (0.35, 0.25)},
            "t1_pre": {"core": (0.3, 0.25)},
            "t1_art": {"core": (0.28, 0.25)},
            "t1_pv": {"core": (0.24, 0.25)},
            "t1_del": {"core": (0.25, 0.25)},
        },
        "checks": {"t2": ("ratio>2.2",), "dwi": ("ratio<0.85",), "t1_in": ("ratio<0.6",),
                   "t1_opp": ("ratio<0.6", "nodrop"), "t1_pre": ("ratio<0.6",), "t1_art": ("ratio<0.6",),
                   "t1_pv": ("ratio<0.6",), "t1_del": ("ratio<0.6",)},
    },
    "abscess": {
        "table": {"t2": "high centre, oedema halo", "dwi": "very high centre", "t1_in": "low",
                  "t1_opp": "low", "t1_pre": "low", "t1_art": "rim + perfusion halo", "t1_pv": "rim",
                  "t1_del": "rim"},
        "geometry": {"diameter_mm": (25.0, 50.0, 90.0), "lobulation": (0.18, 0.15), "edge_mm": 2.0,
                     "heterogeneity": 0.1, "texture_mm": 8.0, "rim_width": 0.3, "rim_min_mm": 6.0,
                     "halo_mm": 10.0, "p_halo": 0.9, "adc": (0.6, 0.3), "p_other": 0.2},
        "signal": {
            "t2": {"core": (2.6, 0.45), "rim": (1.4, 0.36), "halo": (1.25, 0.18)},
            "dwi": {"core": (2.8, 0.54), "rim": (1.3, 0.36)},
            "t1_in": {"core": (0.62, 0.3)},
            "t1_pre": {"core": (0.62, 0.24)},
            "t1_art": {"core": (0.45, 0.36), "rim": (1.6, 0.45), "halo": (1.3, 0.24)},
            "t1_pv": {"core": (0.45, 0.36), "rim": (1.35, 0.36), "halo": (1.1, 0.15)},
            "t1_del": {"core": (0.5, 0.36), "rim": (1.3, 0.36)},
        },
        "checks": {"t2": ("ratio>1.6", "halo>1.05"), "dwi": ("ratio>1.8",), "t1_in": ("ratio<0.85",),
                   "t1_opp": ("ratio<1.0", "nodrop"), "t1_pre": ("ratio<0.85",),
                   "t1_art": ("rim>centre", "halo>1.05"),
                   "t1_pv": ("rim>centre",), "t1_del": ("rim>centre",)},
    },
}
"""The signature table: one entry per class of :data:`mrfound.CLASSES` (see the module docstring)."""

ENHANCING_PHASES = ("t1_art", "t1_pv", "t1_del")
_SIGNAL_SEQS = ("t2", "dwi", "t1_in", "t1_pre", "t1_art", "t1_pv", "t1_del")


def signature(cls: str, signatures: Mapping[str, dict] | None = None) -> dict:
    """Entry of ``cls`` with geometry defaults filled in."""
    sig = (signatures or SIGNATURES)[cls]
    out = copy.deepcopy(dict(sig))
    geo = dict(DEFAULT_GEOMETRY)
    geo.update(sig.get("geometry", {}))
    out["geometry"] = geo
    return out


def _truncnorm(rng: np.random.Generator) -> float:
    return float(np.clip(rng.standard_normal(), -2.5, 2.5))


def _draw(mag, rng: np.random.Generator, variation: float) -> float:
    mean, sd = mag
    return float(mean * math.exp(sd * variation * _truncnorm(rng)))


def arterial_factor(timing: float) -> float:
    """Fraction of a hypervascular lesion's arterial enhancement seen at this bolus timing.

    Early arterial (0) shows ~30 %, late arterial (0.8-1) all of it, later acquisitions lose some.
    """
    t = float(timing)
    return float(np.clip(0.3 + 0.875 * t, 0.0, 1.0) - 0.6 * max(t - 1.0, 0.0))


# ---------------------------------------------------------------------------------------------- lesions
@dataclass
class Lesion:
    """One lesion of a case: class, placement, drawn magnitudes, and its fields on the world grid.

    Attributes:
        cls: Class name.
        centre: World position (mm) in the body frame (before breathing offsets).
        radius: Mean radius (mm); diameter = 2 * radius.
        target: The case's target lesion (mask label 2) or another lesion (label 3).
        variant: Name of the atypical variant drawn, or ``""``.
        signal: Sequence -> component -> drawn ratio to liver.
        geometry: Drawn geometric quantities (component sizes, presence, fat fraction, ADC...).
        seed: Seed of the lesion's random fields (shape, texture, scar, nodules).
    """

    cls: str
    centre: np.ndarray
    radius: float
    target: bool
    variant: str
    signal: dict[str, dict[str, float]]
    geometry: dict[str, float]
    seed: int
    _fields: dict = field(default_factory=dict, repr=False)

    @property
    def diameter_mm(self) -> float:
        return 2.0 * self.radius


def draw_lesion(cls: str, rng: np.random.Generator, *, variation: float = 1.0, variants: bool = True,
                signatures: Mapping[str, dict] | None = None,
                diameter_range: tuple[float, float] | None = None, target: bool = True,
                textbook: bool = False) -> Lesion:
    """Draw a lesion's size, variant and every magnitude of its signature (not yet placed).

    Args:
        cls: Class name (a key of ``signatures``).
        rng: The case's generator.
        variation: Multiplier of every per-case spread (0 = the table's means exactly).
        variants: Allow the atypical variants.
        signatures: Alternative table (default :data:`SIGNATURES`).
        diameter_range: Override of the class's (min, max) diameter in mm.
        target: Whether this is the target lesion.
        textbook: The table's typical presentation: no variants, and each optional feature (centre,
            capsule, halo, scar, fat) present exactly when it is typical (probability >= 0.5).
    """
    sig = signature(cls, signatures)
    geo = sig["geometry"]
    dmin, dmed, dmax = geo["diameter_mm"]
    if diameter_range is not None:
        dmin, dmax = diameter_range
        dmed = math.sqrt(dmin * dmax)
    d = float(np.clip(dmed * math.exp(geo["diameter_sd"] * _truncnorm(rng)), dmin, dmax))
    variant = ""
    u = rng.random()
    if variants and not textbook:
        acc = 0.0
        for name, v in sig.get("variants", {}).items():
            acc += v["p"]
            if u < acc and d <= v.get("max_diameter_mm", 1e9):
                variant = name
                geo.update(v.get("geometry", {}))
                for seq, comps in v.get("signal", {}).items():
                    sig["signal"].setdefault(seq, {}).update(comps)
                for seq, names in v.get("remove", {}).items():
                    for k in names:
                        sig["signal"].get(seq, {}).pop(k, None)
                break
    signal: dict[str, dict[str, float]] = {}
    for seq in _SIGNAL_SEQS:
        comps = sig["signal"].get(seq, {})
        signal[seq] = {k: _draw(comps[k], rng, variation) for k in sorted(comps)}
        signal[seq].setdefault("core", 1.0)
        if "fill" in signal[seq]:
            signal[seq]["fill"] = float(np.clip(signal[seq]["fill"], 0.05, 1.0))
    g: dict[str, float] = {}
    present = {k: rng.random() < geo[f"p_{k}"] for k in ("centre", "capsule", "halo", "scar", "fat")}
    if textbook:
        present = {k: geo[f"p_{k}"] >= 0.5 for k in present}
    present["scar"] = present["scar"] and d >= geo["scar_min_diameter_mm"]
    for k, v in present.items():
        g[f"has_{k}"] = float(v)
    ff_mean, ff_sd = geo["fat_fraction"]
    ff = float(np.clip(_draw((ff_mean, ff_sd), rng, variation), 0.0, 0.45))
    g["fat_fraction"] = ff if g["has_fat"] else 0.0
    g["adc"] = _draw(geo["adc"], rng, variation)
    lob_mean, lob_sd = geo["lobulation"]
    g["lobulation"] = float(max(0.0, lob_mean + lob_sd * variation * _truncnorm(rng)))
    g["rim_min_mm"] = float(geo["rim_min_mm"])
    for k in ("edge_mm", "heterogeneity", "texture_mm", "centre_radius", "rim_width", "capsule_mm", "halo_mm",
              "scar_radius", "fill_front", "elongation"):
        g[k] = float(geo[k]) * math.exp(GEOMETRY_SPREAD.get(k, 0.35) * variation * _truncnorm(rng))
    g["centre_radius"] = min(g["centre_radius"], 0.8)
    g["heterogeneity"] = min(g["heterogeneity"], 0.25)
    g["rim_width"] = min(g["rim_width"], 0.5)
    return Lesion(cls=cls, centre=np.zeros(3), radius=d / 2.0, target=target, variant=variant, signal=signal,
                  geometry=g, seed=int(rng.integers(2**31)))


def _sig(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def lesion_fields(lesion: Lesion, grid: WorldGrid, near_liver: np.ndarray) -> dict:
    """Geometric fields of ``lesion`` on its bounding box of the world grid (cached on the lesion).

    Returns:
        dict with ``sl`` (box slices), ``inside`` (soft 0-1 occupancy), and soft weights ``centre``,
        ``rim``, ``capsule``, ``scar``, ``nodules``, ``front`` (rho minus an irregular front), ``halo``,
        ``texture``.
    """
    key = (id(grid), grid.spacing)
    if lesion._fields.get("key") == key:
        return lesion._fields
    rng = np.random.default_rng(lesion.seed)
    g = lesion.geometry
    R = lesion.radius
    halo = max(g["halo_mm"], 0.0) * (g["has_halo"] > 0)
    ext = R * (1.0 + 2.0 * g["lobulation"]) + halo + 3 * grid.spacing + 4
    lo = lesion.centre - ext
    hi = lesion.centre + ext
    sl = []
    for w in range(3):
        a = max(int(math.floor((lo[w] - grid.origin[w]) / grid.spacing)), 0)
        b = min(int(math.ceil((hi[w] - grid.origin[w]) / grid.spacing)) + 1, grid.shape[w])
        sl.append(slice(a, max(a, b)))
    sl = tuple(sl)
    x = grid.coords(0)[sl[0]] - lesion.centre[0]
    y = grid.coords(1)[sl[1]] - lesion.centre[1]
    z = grid.coords(2)[sl[2]] - lesion.centre[2]
    # random orientation and secondary axes (elongation)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    axes = np.array([1.0, 1.0 - g["elongation"] * rng.random(), 1.0 - g["elongation"] * rng.random()])
    comp = []
    for i in range(3):
        comp.append((q[0, i] * x[:, None, None] + q[1, i] * y[None, :, None] + q[2, i] * z[None, None, :])
                    / (R * axes[i]))
    r = np.sqrt(comp[0] ** 2 + comp[1] ** 2 + comp[2] ** 2).astype(np.float32) + 1e-6
    u = [c / r for c in comp]
    # lobulation: smooth angular bumps on the surface
    lob = np.zeros_like(r)
    n_lobes = 6
    for _ in range(n_lobes):
        v = rng.normal(size=3)
        v *= rng.uniform(1.0, 2.2) / np.linalg.norm(v)
        lob += np.cos(math.pi * (v[0] * u[0] + v[1] * u[1] + v[2] * u[2]) + rng.uniform(0, 2 * math.pi))
    rho = r / (1.0 + g["lobulation"] * lob / math.sqrt(n_lobes / 2))
    shape = r.shape
    box_mm = [s * grid.spacing for s in shape]
    # logistic edges: 10-90 % over ``edge_mm`` (a logistic rises 10-90 % over 4.4 scale units)
    inside = _sig((1.0 - rho) * R / max(g["edge_mm"] / 4.4, 0.1)) * near_liver[sl]
    tex = smooth_noise(shape, [b / max(g["texture_mm"], 2.0) for b in box_mm], rng)
    f: dict = {"key": key, "sl": sl, "inside": inside.astype(np.float32), "texture": tex, "rho": rho}
    soft = max(R * 0.04, 0.4)  # internal boundaries: 10-90 % over ~2-4 mm
    f["centre"] = _sig((g["centre_radius"] - rho) * R / soft) * g["has_centre"]
    rim_w = max(g["rim_width"], g.get("rim_min_mm", 4.0) / R)
    f["rim"] = _sig((rho - (1.0 - rim_w)) * R / soft)
    f["capsule"] = _sig((rho - (1.0 - g["capsule_mm"] / R)) * R / 0.6) * g["has_capsule"]
    # stellate central scar: a core plus 4-6 narrow spokes
    spokes = np.zeros_like(r)
    for _ in range(int(rng.integers(4, 7))):
        v = rng.normal(size=3)
        v /= np.linalg.norm(v)
        spokes = np.maximum(spokes, np.clip(v[0] * u[0] + v[1] * u[1] + v[2] * u[2], 0, 1) ** 30)
    scar_r = g["scar_radius"] * (1.0 + 1.7 * spokes)
    f["scar"] = _sig((scar_r - rho) * R / 1.0) * g["has_scar"]
    # discontinuous peripheral nodules (haemangioma arterial phase)
    blobs = smooth_noise(shape, [b / max(R / 2.5, 3.0) for b in box_mm], rng)
    f["nodules"] = _sig((blobs - 0.7) / 0.12) * _sig((rho - 0.72) * R / 1.0)
    # irregular fill-in front: region with rho > 1 - fill is enhanced
    f["front"] = rho + g["fill_front"] * blobs * 0.5
    halo_w = g["halo_mm"] / R
    f["halo"] = (np.exp(-np.clip(rho - 1.0, 0, None) / max(halo_w, 1e-3)) * (rho > 0.9)).astype(np.float32) \
        * g["has_halo"]
    lesion._fields = f
    return f


def lesion_value(lesion: Lesion, seq: str, f: dict, *, b_value: float = 800.0, liver_adc: float = 1.1,
                 arterial_timing: float = 1.0, gain: float = 1.0) -> np.ndarray:
    """Lesion signal (ratio to liver) on its box for ``seq`` (``t1_in`` = in-phase total signal).

    Args:
        lesion: The lesion.
        seq: Sequence name.
        f: Its fields (:func:`lesion_fields`).
        b_value: DWI b-value.
        liver_adc: Subject's liver ADC.
        arterial_timing: Bolus timing of the case (see :func:`arterial_factor`).
        gain: Enhancement gain of the case (contrast dose, cardiac output) for post-contrast phases.
    """
    s = lesion.signal[seq]

    def adj(v: float) -> float:
        if seq in ENHANCING_PHASES:
            if seq == "t1_art" and v > 1.0:
                v = 1.0 + (v - 1.0) * arterial_factor(arterial_timing)
            v = 1.0 + (v - 1.0) * gain
        if seq == "dwi":
            v *= math.exp(-(b_value - 800.0) * 1e-3 * (lesion.geometry["adc"] - liver_adc))
        return max(v, 0.02)

    core = adj(s["core"])
    v = np.full(f["rho"].shape, core, dtype=np.float32)
    if "centre" in s:
        v += (adj(s["centre"]) - v) * f["centre"]
    if "rim" in s:
        v += (adj(s["rim"]) - v) * f["rim"]
    if "fill" in s:
        w = _sig((f["front"] - (1.0 - s["fill"])) * lesion.radius / 1.5)
        v += (adj(s["filled"]) - v) * w
    if "nodules" in s:
        v += (adj(s["nodules"]) - v) * f["nodules"]
    if "scar" in s:
        v += (adj(s["scar"]) - v) * f["scar"]
    if "capsule" in s:
        v += (adj(s["capsule"]) - v) * f["capsule"]
    het = lesion.geometry["heterogeneity"]
    return v * (1.0 + het * f["texture"])


def halo_multiplier(lesion: Lesion, seq: str, f: dict, gain: float = 1.0) -> np.ndarray | None:
    """Multiplier of the surrounding liver (oedema / perfusion halo) on the box, or ``None``."""
    s = lesion.signal[seq]
    if "halo" not in s or not lesion.geometry["has_halo"]:
        return None
    h = s["halo"]
    if seq in ENHANCING_PHASES:
        h = 1.0 + (h - 1.0) * gain
    return (1.0 + (h - 1.0) * f["halo"]).astype(np.float32)
