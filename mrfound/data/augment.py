"""Intensity augmentation for fine-tuning: a random gamma and scale per available sequence.

Normalised intensities differ between subjects more than a small training cohort shows: in CHAOS T2
the livers of two subjects sit at 0.18-0.20 after normalisation, those of the other 13 at 0.36-0.51,
and every segmenter trained on the 13 failed on the two. Drawing a contrast curve (gamma, log-uniform)
and a gain per sequence and crop shows the model the same anatomy at other brightness levels. The
transforms are MONAI's (:class:`monai.transforms.AdjustContrast`, :class:`monai.transforms.ScaleIntensity`);
the parameters come from the caller's numpy generator so that a seeded dataset stays reproducible.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from mrfound.errors import ConfigError

DEFAULT_GAMMA = (0.5, 2.0)
"""Range of the contrast exponent (drawn log-uniformly, so 0.5 and 2 are equally likely)."""
DEFAULT_SCALE = (0.8, 1.25)
"""Range of the gain (drawn log-uniformly)."""


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def augment_intensity(
    image: np.ndarray,
    rng: np.random.Generator,
    available: Sequence[bool] | np.ndarray | None = None,
    gamma: tuple[float, float] = DEFAULT_GAMMA,
    scale: tuple[float, float] = DEFAULT_SCALE,
) -> np.ndarray:
    """Apply a random gamma, then a random gain, to each available sequence of a crop.

    Gamma is applied over each channel's own [min, max] (MONAI ``AdjustContrast``), so air stays at its
    value and the brightest voxel keeps its value; the gain then scales the whole channel. Absent
    sequences (``available`` False) are left untouched (they stay zero).

    Args:
        image: (S, D, H, W) normalised intensities; not modified.
        rng: Source of the random parameters (two draws per available sequence).
        available: (S,) which sequences are present; ``None`` = all.
        gamma: (low, high) range of the contrast exponent (usually low <= 1 <= high).
        scale: (low, high) range of the gain (usually low <= 1 <= high).

    Returns:
        A new float32 array of the same shape.

    Raises:
        ConfigError: For a range that is not positive and ordered.
    """
    from monai.transforms import AdjustContrast, ScaleIntensity

    for name, (lo, hi) in (("gamma", gamma), ("scale", scale)):
        if not 0 < lo <= hi:
            raise ConfigError(f"intensity augmentation: {name} range must be 0 < low <= high, got {(lo, hi)}")
    out = np.array(image, dtype=np.float32, copy=True)
    present = np.ones(out.shape[0], dtype=bool) if available is None else np.asarray(available, dtype=bool)
    for s in np.flatnonzero(present):
        g = _log_uniform(rng, *gamma)
        f = _log_uniform(rng, *scale)
        ch = AdjustContrast(gamma=g)(out[s : s + 1])
        ch = ScaleIntensity(minv=None, maxv=None, factor=f - 1.0)(ch)
        out[s] = np.asarray(ch, dtype=np.float32)[0]
    return out
