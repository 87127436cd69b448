"""Preprocessing: every sequence and the mask onto one RAS world grid, normalised, plus ROI crops.

The common grid (DESIGN §3) is derived from a reference image: the mask when the case has one (the
mask lies on the grid the annotator worked on), else the first available sequence in vocabulary order.
MONAI ``Orientationd`` (to RAS) and ``Spacingd`` (isotropic ``spacing`` mm, ``diagonal=True`` so voxel
axes are the world R, A, S axes) define that grid lazily (geometry only, no interpolation). Every
sequence (bilinear) and the mask (nearest) are then resampled onto it through its own affine: spacing,
orientation (LPS/RAS, axial/coronal/oblique) and field of view may all differ; nothing is matched by
array index, and each image is interpolated once. Oblique grid pairs go through MONAI ``ResampleToMatchd``;
axis-aligned pairs (the usual case: flips, permutations, spacings, shifts) through
:func:`separable_resample`, which computes the same trilinear/nearest zero-padded interpolation as three
1D passes instead of a dense sampling grid (tested equal to ``ResampleToMatchd``, ~10x faster).

Speed: the body and the intensity statistics are first estimated on a coarse version of the grid
(``coarse_factor`` x the spacing, ~1/64 of the voxels), the fine grid is cropped to the body's box plus
a margin, and only then are the images resampled at full resolution.

Normalisation (per sequence, robust, documented choice): percentiles ``p_lo, p_hi`` (default 1, 99) of the
sequence's intensities inside its own foreground (a threshold, ``foreground``; the union of the foregrounds
is the body), then ``(x - p_lo) / (p_hi - p_lo)`` clipped to ``clip`` (default [0, 1.5]). So the body's tissue
spans roughly [0, 1], air and areas outside a sequence's field of view are 0 (the value also used for
missing sequences, which the ``available`` flags tell apart), and bright outliers (vessels in the arterial
phase, cysts on T2) keep some headroom above 1 instead of being flattened. The percentiles are returned
as ``intensity_range`` so a synthesised sequence can be mapped back to the scanner's scale.

The foreground threshold matters on real data. Otsu's threshold on the raw intensities splits the
*tissue* classes when the air is a small, flat mode: on fat-suppressed T2 (CHAOS T2-SPIR) the liver is
one of the darkest tissues and falls below it (10 % and 1 % of the liver above the threshold in CHAOS
cases 15 and 36), so ``p_lo`` lands above the liver and the whole organ is clipped to 0 (every model of
``benchmarks/chaos_segmentation.py`` failed on those cases). ``foreground="log_otsu"`` takes Otsu's
threshold of ``log(1 + x - min)``, which separates air from tissue (100 % of the liver above it in every
CHAOS case). It is the default; ``"otsu"`` remains for checkpoints and caches made before
the option existed: a saved config without the field (:meth:`PreprocessConfig.from_saved`) means
``"otsu"``, and an ``"otsu"`` cache keeps its old key. The phantom benchmarks whose tables were made with
raw Otsu pin it (``benchmarks/_common.py`` ``PHANTOM_FOREGROUND``) so that their commands reproduce them.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from mrfound.data.manifest import Case
from mrfound.data.readers import read_image, voxel_to_world, world_to_voxel
from mrfound.data.sequences import DEFAULT_VOCABULARY, Vocabulary
from mrfound.errors import ConfigError, ManifestError

if TYPE_CHECKING:  # pragma: no cover
    from mrfound.data.cache import PreprocessCache  # noqa: F401  (re-exported lazily, see __getattr__)

_MASK = "__mask__"
_GRID = "__grid__"
_RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))


FOREGROUND_METHODS = ("otsu", "log_otsu")
"""Foreground thresholds of :class:`PreprocessConfig` (see the module docstring)."""


@dataclass
class PreprocessConfig:
    """Preprocessing settings; every field except ``roi_size`` is part of the cache key.

    Attributes:
        spacing: Isotropic voxel size of the common grid (mm).
        roi_size: Side of the cubic ROI crops (voxels).
        percentiles: Intensity percentiles mapped to 0 and 1 (within each sequence's foreground).
        clip: Range the normalised intensities are clipped to.
        crop_to_body: Crop the grid to the body's bounding box (plus ``body_margin_mm``).
        body_margin_mm: Margin kept around the body box.
        coarse_factor: Coarse grid spacing / ``spacing`` for the body and percentile estimates.
        foreground: Threshold of each sequence's foreground (percentiles and body): ``log_otsu`` (Otsu
            on ``log(1 + x - min)``, the default: keeps dark tissue such as the liver on fat-suppressed
            T2; see the module docstring) or ``otsu`` (Otsu on the raw intensities, the original method).
        fast_resample: Resample axis-aligned grid pairs with :func:`separable_resample` (same result as
            MONAI's ``ResampleToMatchd``, ~10x faster); oblique pairs always go through MONAI. Not part of
            the cache key.
    """

    spacing: float = 1.5
    roi_size: int = 64
    percentiles: tuple[float, float] = (1.0, 99.0)
    clip: tuple[float, float] = (0.0, 1.5)
    crop_to_body: bool = True
    body_margin_mm: float = 10.0
    coarse_factor: int = 4
    foreground: str = "log_otsu"
    fast_resample: bool = True

    def __post_init__(self) -> None:
        self.percentiles = tuple(float(p) for p in self.percentiles)  # type: ignore[assignment]
        self.clip = tuple(float(c) for c in self.clip)  # type: ignore[assignment]
        if not self.spacing > 0:
            raise ConfigError(f"spacing must be > 0 mm, got {self.spacing}")
        if int(self.roi_size) < 1:
            raise ConfigError(f"roi_size must be >= 1 voxel, got {self.roi_size}")
        lo, hi = self.percentiles
        if not 0 <= lo < hi <= 100:
            raise ConfigError(f"percentiles must satisfy 0 <= low < high <= 100, got {self.percentiles}")
        if not self.clip[0] < self.clip[1]:
            raise ConfigError(f"clip must be (low, high) with low < high, got {self.clip}")
        if int(self.coarse_factor) < 1:
            raise ConfigError(f"coarse_factor must be >= 1, got {self.coarse_factor}")
        if self.foreground not in FOREGROUND_METHODS:
            raise ConfigError(
                f"foreground must be one of {', '.join(FOREGROUND_METHODS)}, got {self.foreground!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        d = dataclasses.asdict(self)
        d["percentiles"] = list(self.percentiles)
        d["clip"] = list(self.clip)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PreprocessConfig:
        """Inverse of :meth:`to_dict`. Raises ``ConfigError`` for unknown keys."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"unknown preprocessing settings {unknown}; known: {sorted(names)}")
        return cls(**dict(d))

    @classmethod
    def from_saved(cls, d: Mapping[str, Any]) -> PreprocessConfig:
        """:meth:`from_dict` for a config saved by a checkpoint or cache.

        A saved config without ``foreground`` predates the field and was made with raw Otsu, the default
        then; it keeps ``"otsu"`` so the checkpoint sees the intensities it was trained on. An empty one
        (nothing saved) gives today's defaults.
        """
        return cls.from_dict({"foreground": "otsu", **dict(d)}) if d else cls()

    def cache_dict(self) -> dict[str, Any]:
        """The settings that change the cached arrays (not the crop size)."""
        d = self.to_dict()
        d.pop("roi_size")
        d.pop("fast_resample")
        if d["foreground"] == "otsu":  # the original method: caches made before the field existed stay valid
            d.pop("foreground")
        return d


# ----------------------------------------------------------------------------------------------------
# intensity helpers


def otsu_threshold(values: np.ndarray, bins: int = 128) -> float:
    """Otsu's threshold of ``values`` (finite entries only); the max value if they are constant."""
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return 0.0
    lo, hi = float(v.min()), float(v.max())
    if hi <= lo:
        return hi
    hist, edges = np.histogram(v, bins=bins, range=(lo, hi))
    centres = 0.5 * (edges[:-1] + edges[1:])
    w0 = np.cumsum(hist, dtype=np.float64)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres)
    mu0 = m0 / np.maximum(w0, 1)
    mu1 = (m0[-1] - m0) / np.maximum(w1, 1)
    between = w0 * w1 * (mu0 - mu1) ** 2
    best = np.flatnonzero(between >= between.max() * (1 - 1e-9))  # a plateau when a gap separates the modes
    return float(edges[int(best[len(best) // 2]) + 1])


def log_otsu_threshold(values: np.ndarray, bins: int = 128) -> float:
    """Otsu's threshold of ``log(1 + x - min)``, mapped back to intensities (finite entries only).

    MR intensities are heavy-tailed: on the raw scale Otsu splits dark from bright tissue; on the log
    scale the widest gap is between air (noise near the minimum) and tissue. ``log1p`` compresses
    intensities in scanner units (tens to thousands); on images already scaled to about [0, 1] it is
    close to the identity and this threshold close to :func:`otsu_threshold`.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return 0.0
    lo = float(v.min())
    return float(np.expm1(otsu_threshold(np.log1p(v - lo), bins)) + lo)


def _robust_range(
    fg: np.ndarray, everything: np.ndarray, percentiles: tuple[float, float]
) -> tuple[float, float]:
    """Percentiles of the foreground; for a flat foreground, the whole image's range; then unit scale."""
    if fg.size:
        lo, hi = (float(x) for x in np.percentile(fg, percentiles))
        if hi > lo:
            return lo, hi
    lo, hi = (float(everything.min()), float(everything.max())) if everything.size else (0.0, 1.0)
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


# ----------------------------------------------------------------------------------------------------
# grid construction and resampling (MONAI)


def _meta(array: np.ndarray, affine: np.ndarray):
    import torch
    from monai.data import MetaTensor

    return MetaTensor(
        torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)[None]),
        affine=torch.as_tensor(np.asarray(affine, dtype=np.float64)),
    )


def _template(shape: tuple[int, ...], affine: np.ndarray):
    """A grid-only MetaTensor (one real element broadcast to the shape: no memory for voxels)."""
    import torch
    from monai.data import MetaTensor

    data = torch.zeros(1, 1, 1, 1).expand(1, *[int(s) for s in shape])
    return MetaTensor(data, affine=torch.as_tensor(np.asarray(affine, dtype=np.float64)))


def _grid_geometry(ref, spacing: float) -> tuple[np.ndarray, tuple[int, ...]]:
    """RAS-oriented, axis-aligned grid at ``spacing`` covering ``ref`` (lazy: no interpolation)."""
    from monai.transforms import Orientationd, Spacingd

    d = {"ref": ref}
    d = Orientationd(keys="ref", axcodes="RAS", labels=_RAS_LABELS, lazy=True)(d)
    d = Spacingd(keys="ref", pixdim=float(spacing), diagonal=True, lazy=True)(d)
    out = d["ref"]
    affine = np.asarray(out.peek_pending_affine(), dtype=np.float64)
    shape = tuple(int(s) for s in out.peek_pending_shape())
    return affine, shape


def _resampler(keys: list[str], modes: list[str]):
    from monai.transforms import ResampleToMatchd

    return ResampleToMatchd(
        keys=keys, key_dst=_GRID, mode=modes, padding_mode="zeros", dtype=np.float32, allow_missing_keys=True
    )


def axis_aligned_map(src_affine: np.ndarray, dst_affine: np.ndarray, tol: float = 1e-6):
    """Whether destination voxels map to source voxels by an axis permutation, scale and shift.

    Returns:
        ``(perm, scale, offset)`` with ``src_voxel[perm[d]] = scale[d] * dst_voxel[d] + offset[d]``, or
        ``None`` when the two grids are rotated (oblique) relative to each other.
    """
    m = np.linalg.inv(np.asarray(src_affine, dtype=np.float64)) @ np.asarray(dst_affine, dtype=np.float64)
    r = m[:3, :3]
    perm = []
    for d in range(3):
        col = np.abs(r[:, d])
        nz = np.flatnonzero(col > tol * max(col.max(), 1e-12))
        if len(nz) != 1:
            return None
        perm.append(int(nz[0]))
    if sorted(perm) != [0, 1, 2]:
        return None
    scale = np.array([r[perm[d], d] for d in range(3)])
    offset = np.array([m[perm[d], 3] for d in range(3)])
    return perm, scale, offset


def _interp_axis(arr: np.ndarray, coords: np.ndarray, axis: int, nearest: bool) -> np.ndarray:
    """Sample ``arr`` along ``axis`` at continuous ``coords`` (zeros outside), linear or nearest."""
    n = arr.shape[axis]
    bshape = [1] * arr.ndim
    bshape[axis] = len(coords)
    if nearest:
        idx = np.rint(coords).astype(np.int64)  # half-to-even, like torch's grid_sample "nearest"
        out = np.take(arr, np.clip(idx, 0, n - 1), axis=axis)
        valid = (idx >= 0) & (idx < n)
        if not valid.all():
            out *= valid.reshape(bshape).astype(arr.dtype)
        return out
    i0 = np.floor(coords).astype(np.int64)
    w1 = (coords - i0).astype(np.float32)
    w0 = (1.0 - w1) * ((i0 >= 0) & (i0 < n))
    w1 = w1 * ((i0 + 1 >= 0) & (i0 + 1 < n))
    out = np.take(arr, np.clip(i0, 0, n - 1), axis=axis)
    out *= w0.reshape(bshape).astype(np.float32)
    out += np.take(arr, np.clip(i0 + 1, 0, n - 1), axis=axis) * w1.reshape(bshape).astype(np.float32)
    return out


def separable_resample(
    array: np.ndarray,
    src_affine: np.ndarray,
    dst_affine: np.ndarray,
    shape: tuple[int, ...],
    nearest: bool = False,
) -> np.ndarray | None:
    """Affine resampling for axis-aligned grid pairs as three 1D passes (``None`` if oblique).

    Trilinear interpolation with zero padding is separable, so this equals MONAI's ``ResampleToMatch``
    (bilinear or nearest, ``padding_mode="zeros"``, voxel centres mapped through the affines) for such
    grids at a fraction of its cost (no dense sampling grid). Flips, axis permutations (axial vs coronal,
    LPS vs RAS), spacings and fields of view are all handled through the affines.
    """
    amap = axis_aligned_map(src_affine, dst_affine)
    if amap is None:
        return None
    perm, scale, offset = amap
    out = np.asarray(array, dtype=np.float32).transpose(perm)
    for d in range(3):
        coords = scale[d] * np.arange(int(shape[d]), dtype=np.float64) + offset[d]
        out = _interp_axis(out, coords, d, nearest)
    return np.ascontiguousarray(out)


def _resample(
    images: dict[str, tuple[np.ndarray, np.ndarray]],
    keys: list[str],
    modes: list[str],
    shape,
    affine,
    fast: bool = True,
) -> dict[str, np.ndarray]:
    """Resample ``images[k] = (array, affine)`` onto the grid ``(shape, affine)``."""
    out: dict[str, np.ndarray] = {}
    slow_keys, slow_modes = [], []
    for k, mode in zip(keys, modes):
        if k not in images:
            continue
        res = separable_resample(*images[k], affine, shape, mode == "nearest") if fast else None
        if res is None:
            slow_keys.append(k)
            slow_modes.append(mode)
        else:
            out[k] = res
    if slow_keys:  # oblique grids (or fast=False): MONAI's dense affine resampling
        d = {k: _meta(*images[k]) for k in slow_keys}
        d[_GRID] = _template(shape, affine)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # MONAI deprecation chatter about default arguments
            res = _resampler(slow_keys, slow_modes)(d)
        for k in slow_keys:
            out[k] = np.asarray(res[k].array if hasattr(res[k], "array") else res[k])[0]
    return out


def _translate(affine: np.ndarray, start: np.ndarray) -> np.ndarray:
    shift = np.eye(4)
    shift[:3, 3] = start
    return np.asarray(affine, dtype=np.float64) @ shift


# ----------------------------------------------------------------------------------------------------
# main entry points


def _load_input(value: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(value, tuple | list) and len(value) == 2 and not isinstance(value[0], str | os.PathLike):
        arr = np.asarray(value[0], dtype=np.float32)
        aff = np.asarray(value[1], dtype=np.float64)
        if arr.ndim == 4 and arr.shape[-1] == 1:
            arr = arr[..., 0]
        if arr.ndim != 3 or aff.shape != (4, 4):
            raise ManifestError(
                f"expected a 3D array and a 4x4 affine, got {arr.shape} and {aff.shape}", column=name
            )
    else:
        arr, aff = read_image(value)
    if not np.isfinite(arr).all():  # NaN/Inf voxels (validate reports them) would poison every statistic
        arr = np.nan_to_num(arr, nan=0.0, posinf=0.0, neginf=0.0)
    return arr, aff


def load_case_arrays(
    seq_to_path_or_array: Mapping[str, Any],
    config: PreprocessConfig | None = None,
    vocabulary: Vocabulary = DEFAULT_VOCABULARY,
    *,
    mask: Any = None,
    lesion_xyz: tuple[float, float, float] | None = None,
) -> dict[str, Any]:
    """Preprocess an ad-hoc case (inference): sequences onto one RAS grid, normalised.

    Args:
        seq_to_path_or_array: Sequence name (canonical or alias) -> path, or -> ``(array, affine)``.
        config: Preprocessing settings.
        vocabulary: Fixes the channel order of ``image``.
        mask: Optional label map: path or ``(array, affine)``.
        lesion_xyz: Optional lesion centre in world mm (RAS+), used when the mask has no label 2.

    Returns:
        Dict with ``image`` float32 (S, X, Y, Z) (zeros where missing), ``available`` bool (S,),
        ``mask`` uint8 (1, X, Y, Z) or None, ``affine`` float64 (4, 4) of the grid, ``lesion_center``
        float64 (3,) voxel coordinates or None, ``body`` bool (X, Y, Z), ``intensity_range`` float32
        (S, 2) (the percentiles mapped to 0 and 1; NaN where missing).
    """
    config = config or PreprocessConfig()
    images: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name, value in seq_to_path_or_array.items():
        if value is None or (isinstance(value, str) and not value):
            continue
        seq = vocabulary.canonical_sequence(name)
        if seq is None:
            raise ConfigError(f"unknown sequence {name!r}; known: {', '.join(vocabulary.sequences)}")
        if seq in images:
            raise ConfigError(f"sequence {seq!r} given twice (as {name!r})")
        images[seq] = _load_input(value, seq)
    if not images:
        raise ManifestError("no sequence given")
    if mask is not None:
        images[_MASK] = _load_input(mask, "mask")
    seqs = [s for s in vocabulary.sequences if s in images]
    ref_key = _MASK if _MASK in images else seqs[0]

    # 1. geometry of the fine and coarse grids (no interpolation yet)
    ref = _meta(*images[ref_key])
    grid_affine, grid_shape = _grid_geometry(ref, config.spacing)
    n_fine = int(np.prod(grid_shape))
    factor = int(max(1, min(config.coarse_factor, np.floor((n_fine / 32768) ** (1 / 3)))))
    c_affine, c_shape = _grid_geometry(ref, config.spacing * factor)

    # 2. coarse pass: per-sequence Otsu threshold and percentiles, body box
    keys = [*seqs, _MASK] if _MASK in images else seqs
    modes = ["bilinear"] * len(seqs) + (["nearest"] if _MASK in images else [])
    coarse = _resample(images, keys, modes, c_shape, c_affine, config.fast_resample)
    thresholds: dict[str, float] = {}
    ranges: dict[str, tuple[float, float]] = {}
    body_c = np.zeros(c_shape, dtype=bool)
    for s in seqs:
        v = coarse[s]
        thresholds[s] = otsu_threshold(v) if config.foreground == "otsu" else log_otsu_threshold(v)
        fg = v > thresholds[s]
        body_c |= fg
        ranges[s] = _robust_range(v[fg], v, config.percentiles)
    if _MASK in coarse:
        body_c |= coarse[_MASK] > 0.5

    # 3. crop the fine grid to the body box (+ margin)
    start = np.zeros(3, dtype=int)
    stop = np.asarray(grid_shape, dtype=int)
    if config.crop_to_body and body_c.any():
        idx = np.argwhere(body_c)
        lo_c, hi_c = idx.min(0) - 0.5, idx.max(0) + 0.5
        corners = np.array(
            [[x, y, z] for x in (lo_c[0], hi_c[0]) for y in (lo_c[1], hi_c[1]) for z in (lo_c[2], hi_c[2])]
        )
        box = world_to_voxel(voxel_to_world(corners, c_affine), grid_affine)  # body box on the fine grid
        margin = config.body_margin_mm / config.spacing
        start = np.maximum(np.floor(box.min(0) - margin).astype(int), 0)
        stop = np.minimum(np.ceil(box.max(0) + margin).astype(int) + 1, stop)
        stop = np.maximum(stop, start + 1)
    affine = _translate(grid_affine, start.astype(np.float64))
    shape = tuple(int(v) for v in stop - start)

    # 4. fine pass: resample, body, normalise
    fine = _resample(images, keys, modes, shape, affine, config.fast_resample)
    S = len(vocabulary.sequences)
    image = np.zeros((S, *shape), dtype=np.float32)
    available = np.zeros(S, dtype=bool)
    intensity_range = np.full((S, 2), np.nan, dtype=np.float32)
    body = np.zeros(shape, dtype=bool)
    lo_clip, hi_clip = config.clip
    for s in seqs:
        i = vocabulary.sequences.index(s)
        x = fine[s]
        body |= x > thresholds[s]
        lo, hi = ranges[s]
        x -= lo
        x *= 1.0 / (hi - lo)
        np.clip(x, lo_clip, hi_clip, out=x)
        image[i] = x
        available[i] = True
        intensity_range[i] = (lo, hi)
    mask_arr = None
    if _MASK in fine:
        mask_arr = np.clip(np.rint(fine[_MASK]), 0, 255).astype(np.uint8)[None]
        body |= mask_arr[0] > 0
    return {
        "image": image,
        "available": available,
        "mask": mask_arr,
        "affine": affine,
        "lesion_center": _lesion_center(mask_arr, lesion_xyz, affine),
        "body": body,
        "intensity_range": intensity_range,
    }


def _lesion_center(mask: np.ndarray | None, lesion_xyz, affine: np.ndarray) -> np.ndarray | None:
    if mask is not None:
        idx = np.argwhere(mask[0] == 2)
        if len(idx):
            return idx.mean(0).astype(np.float64)
    if lesion_xyz is not None:
        return np.asarray(world_to_voxel(np.asarray(lesion_xyz, dtype=np.float64), affine), dtype=np.float64)
    return None


def preprocess_case(
    case: Case, config: PreprocessConfig | None = None, vocabulary: Vocabulary = DEFAULT_VOCABULARY
) -> dict[str, Any]:
    """Preprocess one manifest case; see :func:`load_case_arrays` for the returned dict.

    Raises:
        ManifestError: naming the case and column when a file cannot be used.
    """
    try:
        return load_case_arrays(
            case.sequences, config, vocabulary, mask=case.mask, lesion_xyz=case.lesion_xyz
        )
    except ManifestError as e:
        column = e.column
        if column is None and e.path is not None:
            column = next(
                (s for s, p in case.sequences.items() if str(p) == e.path),
                "mask" if case.mask is not None and str(case.mask) == e.path else None,
            )
        raise ManifestError(e.problem, case=case.case, column=column, path=e.path) from e


# ----------------------------------------------------------------------------------------------------
# crops


def _crop(sample: Mapping[str, Any], start: np.ndarray, size: int) -> dict[str, Any]:
    """Cut a ``size``^3 cube starting at voxel ``start`` (zero padding outside the volume)."""
    image = sample["image"]
    shape = np.asarray(image.shape[1:])
    start = np.asarray(start, dtype=int)
    src_lo = np.clip(start, 0, shape)
    src_hi = np.clip(start + size, 0, shape)
    dst_lo = src_lo - start
    dst_hi = dst_lo + (src_hi - src_lo)
    src = tuple(slice(a, b) for a, b in zip(src_lo, src_hi))
    dst = tuple(slice(a, b) for a, b in zip(dst_lo, dst_hi))

    def cut(arr: np.ndarray | None, lead: bool) -> np.ndarray | None:
        if arr is None:
            return None
        out = np.zeros(((arr.shape[0],) if lead else ()) + (size, size, size), dtype=arr.dtype)
        if lead:
            out[(slice(None), *dst)] = arr[(slice(None), *src)]
        else:
            out[dst] = arr[src]
        return out

    out = dict(sample)
    out["image"] = cut(image, True)
    out["mask"] = cut(sample.get("mask"), True)
    if sample.get("body") is not None:
        out["body"] = cut(sample["body"], False)
    out["affine"] = _translate(sample["affine"], start.astype(np.float64))
    lc = sample.get("lesion_center")
    out["lesion_center"] = None if lc is None else np.asarray(lc, dtype=np.float64) - start
    return out


def _fallback_center(sample: Mapping[str, Any]) -> np.ndarray:
    body = sample.get("body")
    if body is not None and body.any():
        return np.argwhere(body).mean(0)
    return (np.asarray(sample["image"].shape[1:]) - 1) / 2.0


def crop_lesion(sample: Mapping[str, Any], roi_size: int) -> dict[str, Any]:
    """Cubic ROI centred on ``lesion_center`` (body centroid when the case has no lesion position).

    The lesion-centre voxel lands at index ``roi_size // 2`` on every axis.
    """
    centre = sample.get("lesion_center")
    if centre is None:
        centre = _fallback_center(sample)
    start = np.rint(np.asarray(centre, dtype=np.float64)).astype(int) - roi_size // 2
    return _crop(sample, start, int(roi_size))


def random_crop(
    sample: Mapping[str, Any],
    roi_size: int,
    rng: np.random.Generator,
    anywhere: bool = False,
    context: int = 0,
) -> dict[str, Any]:
    """Cubic ROI around a random body voxel, shifted to stay inside the volume where it fits.

    With ``anywhere`` the centre is any voxel of the volume (background included), not a body voxel.
    ``context`` adds that many voxels on every side of the ROI (zero padding outside the volume) while
    placing the ROI exactly as without it, so a spatial augmentation of the larger cube keeps the ROIs'
    distribution over the volume (a larger cube shifted to fit would never put the ROI near the border).
    """
    shape = np.asarray(sample["image"].shape[1:])
    body = None if anywhere else sample.get("body")
    if body is not None and body.any():
        flat = np.flatnonzero(body)
        centre = np.array(np.unravel_index(flat[rng.integers(len(flat))], body.shape))
    else:
        centre = np.array([rng.integers(s) for s in shape])
    start = centre - roi_size // 2
    fits = shape >= roi_size
    start = np.where(fits, np.clip(start, 0, np.maximum(shape - roi_size, 0)), start)
    return _crop(sample, start - int(context), int(roi_size) + 2 * int(context))


def jittered_lesion_crop(
    sample: Mapping[str, Any], roi_size: int, rng: np.random.Generator, max_shift: int | None = None
) -> dict[str, Any]:
    """Cubic ROI around the lesion centre, shifted by a uniform random offset per axis.

    The shift is at most ``max_shift`` voxels (default ``roi_size // 4``), so the lesion is in view but not
    always in the same place. Falls back to :func:`random_crop` when the case has no lesion position.
    """
    centre = sample.get("lesion_center")
    if centre is None:
        return random_crop(sample, roi_size, rng)
    shift = roi_size // 4 if max_shift is None else int(max_shift)
    offset = rng.integers(-shift, shift + 1, size=3)
    start = np.rint(np.asarray(centre, dtype=np.float64)).astype(int) + offset - roi_size // 2
    return _crop(sample, start, int(roi_size))


def __getattr__(name: str) -> Any:
    # PreprocessCache lives in cache.py (it imports this module); re-exported here per the contract.
    if name == "PreprocessCache":
        from mrfound.data.cache import PreprocessCache

        return PreprocessCache
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "PreprocessConfig",
    "PreprocessCache",
    "crop_lesion",
    "jittered_lesion_crop",
    "load_case_arrays",
    "log_otsu_threshold",
    "otsu_threshold",
    "preprocess_case",
    "random_crop",
]
