"""Augmentation for fine-tuning: a random gamma and scale per available sequence, a random gain on one
labelled organ (segmentation), and a random rotation and zoom of a crop with its labels.

Normalised intensities differ between subjects more than a small training cohort shows: in CHAOS T2
the livers of two subjects sit at 0.18-0.20 after normalisation, those of the other 13 at 0.36-0.51,
and every segmenter trained on the 13 failed on the two. Drawing a contrast curve (gamma, log-uniform)
and a gain per sequence and crop shows the model the same anatomy at other brightness levels. The
transforms are MONAI's (:class:`monai.transforms.AdjustContrast`, :class:`monai.transforms.ScaleIntensity`);
the parameters come from the caller's numpy generator so that a seeded dataset stays reproducible.
A global curve keeps the liver's rank among the tissues; :func:`augment_organ_contrast` changes it.
:func:`augment_spatial` varies what a dozen subjects cannot: the organ's tilt and size.
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
DEFAULT_ORGAN_SCALE = (0.35, 1.5)
"""Range of the gain inside the labelled organ (log-uniform): from an iron-loaded liver, darker than the
muscle around it on T2 (CHAOS subject 15), to a liver brighter than usual."""
DEFAULT_ORGAN_SIGMA = 1.0
"""Smoothing (voxels) of the organ weight, so the gain does not paint a step exactly on the label edge."""
DEFAULT_ROTATE_DEG = 15.0
"""Largest rotation about each axis, in degrees (drawn uniformly in +-this)."""
DEFAULT_ZOOM = (0.85, 1.15)
"""Range of the isotropic zoom (drawn log-uniformly)."""
SPATIAL_MARGIN = 1.75
"""Edge of the crop to take before :func:`augment_spatial`, relative to the output edge (see
:func:`spatial_context`): with the default rotation and zoom the rotated, zoomed output box reaches at
most 1.73 times its half-edge from the centre (the worst corner), so no padding shows."""


def _check_range(what: str, name: str, value: tuple[float, float]) -> None:
    lo, hi = value
    if not 0 < lo <= hi:
        raise ConfigError(f"{what}: {name} range must be 0 < low <= high, got {(lo, hi)}")


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

    _check_range("intensity augmentation", "gamma", gamma)
    _check_range("intensity augmentation", "scale", scale)
    out = np.array(image, dtype=np.float32, copy=True)
    present = np.ones(out.shape[0], dtype=bool) if available is None else np.asarray(available, dtype=bool)
    for s in np.flatnonzero(present):
        g = _log_uniform(rng, *gamma)
        f = _log_uniform(rng, *scale)
        ch = AdjustContrast(gamma=g)(out[s : s + 1])
        ch = ScaleIntensity(minv=None, maxv=None, factor=f - 1.0)(ch)
        out[s] = np.asarray(ch, dtype=np.float32)[0]
    return out


def augment_organ_contrast(
    image: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator,
    label: int = 1,
    available: Sequence[bool] | np.ndarray | None = None,
    scale: tuple[float, float] = DEFAULT_ORGAN_SCALE,
    sigma: float = DEFAULT_ORGAN_SIGMA,
) -> np.ndarray:
    """Scale the intensities inside one labelled organ by a random gain per available sequence.

    A global gamma keeps the organ's rank among the tissues around it, but disease changes that rank: on
    T2 an iron-loaded liver is darker than muscle (CHAOS subject 15, below every other subject's liver
    and below its own body median), a fatty liver brighter on in-phase T1. A segmenter trained on a few
    typical livers learns "the mid-grey organ" and misses such a liver. Multiplying the organ (its label
    mask, smoothed by ``sigma`` voxels with :func:`scipy.ndimage.gaussian_filter` so there is no step on
    the label edge) by a gain drawn per crop makes shape and position, not brightness, the cue. Training
    only: it reads the label.

    Args:
        image: (S, D, H, W) normalised intensities; not modified.
        labels: (D, H, W) or (1, D, H, W) integer label map of the same crop.
        rng: Source of the gains (one draw per available sequence; none when the organ is absent).
        label: Label value of the organ (1 = liver).
        available: (S,) which sequences are present; ``None`` = all.
        scale: (low, high) range of the gain, drawn log-uniformly.
        sigma: Gaussian smoothing of the organ weight in voxels (0 = hard mask edge).

    Returns:
        A new float32 array of the same shape (a copy of the input when the crop holds no organ voxel).

    Raises:
        ConfigError: For a range that is not positive and ordered, a negative ``sigma`` or a label map of
            another shape.
    """
    from scipy.ndimage import gaussian_filter

    _check_range("organ contrast augmentation", "scale", scale)
    lo, hi = scale
    if not sigma >= 0:
        raise ConfigError(f"organ contrast augmentation: sigma must be >= 0, got {sigma}")
    lab = np.asarray(labels)
    if lab.ndim == image.ndim:
        lab = lab[0]
    if lab.shape != image.shape[1:]:
        raise ConfigError(
            f"organ contrast augmentation: labels of shape {np.asarray(labels).shape} do not match the image "
            f"{image.shape}"
        )
    out = np.array(image, dtype=np.float32, copy=True)
    organ = (lab == label).astype(np.float32)
    if not organ.any():
        return out
    weight = gaussian_filter(organ, sigma) if sigma > 0 else organ
    present = np.ones(out.shape[0], dtype=bool) if available is None else np.asarray(available, dtype=bool)
    for s in np.flatnonzero(present):
        gain = _log_uniform(rng, lo, hi)
        out[s] *= 1.0 + weight * (gain - 1.0)
    return out


def spatial_context(out: int) -> int:
    """Margin in voxels, on every side of an output box of edge ``out``, of the crop that
    :func:`augment_spatial` needs (default ranges): the crop is :data:`SPATIAL_MARGIN` times the box plus a
    voxel each side for linear interpolation, and the box sits on whole voxels in its middle."""
    return int(math.ceil(out * (SPATIAL_MARGIN - 1) / 2)) + 1


def augment_spatial(
    image: np.ndarray,
    labels: np.ndarray | None,
    rng: np.random.Generator,
    out_size: int | Sequence[int] | None = None,
    rotate_deg: float = DEFAULT_ROTATE_DEG,
    zoom: tuple[float, float] = DEFAULT_ZOOM,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Rotate and zoom a crop and its labels about the crop centre by one random draw.

    With a dozen training subjects a segmenter sees a dozen liver tilts and sizes. A rotation about
    each axis (uniform in +-``rotate_deg``) and an isotropic zoom (log-uniform in ``zoom``) show it more;
    mirroring is left out on purpose, since a liver on the left is not anatomy. The image is resampled
    linearly, the labels by nearest neighbour (the matrix of MONAI :class:`monai.transforms.Affine`, one
    sampling grid for both). Give a crop larger than the output (``out_size``) so that the output box
    rotated inside it never reaches past its edge (any part that does is filled with zeros):
    :func:`spatial_context` gives a large enough margin for the default ranges.

    Args:
        image: (S, D, H, W) intensities; not modified.
        labels: (D, H, W) or (1, D, H, W) integer labels of the same crop, or ``None``.
        rng: Source of the parameters (four draws: three angles, one zoom).
        out_size: Edge (or edges) of the central output box; ``None`` = the input's shape.
        rotate_deg: Largest rotation about each axis in degrees (0 = none).
        zoom: (low, high) range of the zoom factor; above 1 enlarges the anatomy.

    Returns:
        The float32 image and the labels (same dtype and rank as given, or ``None``), of the output size.

    Raises:
        ConfigError: For a negative rotation, a zoom range that is not positive and ordered, an output
            larger than the input or labels of another shape.
    """
    import torch
    import torch.nn.functional as F
    from monai.transforms.utils import create_rotate, create_scale

    if not (math.isfinite(rotate_deg) and rotate_deg >= 0):
        raise ConfigError(f"spatial augmentation: rotate_deg must be >= 0, got {rotate_deg}")
    _check_range("spatial augmentation", "zoom", zoom)
    spatial = tuple(image.shape[1:])
    size = spatial if out_size is None else tuple(int(x) for x in np.broadcast_to(np.asarray(out_size), (3,)))
    if any(o > i for o, i in zip(size, spatial)):
        raise ConfigError(f"spatial augmentation: output {size} larger than the crop {spatial}")
    lab = None if labels is None else np.asarray(labels)
    if lab is not None and lab.shape[-3:] != spatial:
        raise ConfigError(
            f"spatial augmentation: labels of shape {lab.shape} do not match the image {image.shape}"
        )
    angles = np.deg2rad(rng.uniform(-rotate_deg, rotate_deg, 3))
    # MONAI scales the sampling grid: a factor 1/z shows the anatomy z times larger
    factor = 1.0 / _log_uniform(rng, *zoom)
    # The matrix MONAI's Affine builds (voxel units about the centres), applied by one torch affine_grid for
    # image and labels: MONAI's Affine resamples the same way, with MetaTensor bookkeeping around it,
    # and builds the grid twice (benchmarks/augment_speed.py: 4.7 vs 2.2 ms per 32³ output from a 58³ crop).
    mat = create_rotate(3, tuple(float(a) for a in angles)) @ create_scale(3, (factor,) * 3)
    # centred voxel coordinates c_in = M c_out; grid_sample's normalised ones (align_corners=False) are
    # u = 2 c / n per axis, and its grid lists axes last-first (x = W)
    theta = np.diag(1.0 / np.asarray(spatial)) @ mat[:3, :3] @ np.diag(np.asarray(size, dtype=float))
    theta = theta[::-1, ::-1]
    grid = F.affine_grid(
        torch.as_tensor(np.concatenate([theta, np.zeros((3, 1))], 1)[None], dtype=torch.float32),
        [1, 1, *size],
        align_corners=False,
    )
    img = torch.as_tensor(image, dtype=torch.float32)[None]
    out = F.grid_sample(img, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0].numpy()
    if lab is None:
        return out, None
    lab4 = lab if lab.ndim == 4 else lab[None]
    warped = F.grid_sample(
        torch.as_tensor(lab4, dtype=torch.float32)[None], grid, mode="nearest", align_corners=False
    )[0]
    warped_np = np.rint(warped.numpy()).astype(lab.dtype)
    return out, warped_np if lab.ndim == 4 else warped_np[0]
