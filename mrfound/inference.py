"""Inference for new patients: classify, segment and impute missing sequences (DESIGN §4 heads, §6).

Used by ``mrfound predict`` / ``mrfound impute`` and by the ``predict``, ``segment`` and ``impute`` methods
of the object :func:`mrfound.load_pretrained` returns.

**A case** is a manifest :class:`~mrfound.data.manifest.Case` or a dict ``sequence -> path`` (NIfTI file
or DICOM folder) or ``sequence -> (array, affine)``, any subset of the model's sequences (names or
aliases). It is preprocessed exactly as in training (:func:`mrfound.data.preprocess.load_case_arrays`:
one RAS grid at the checkpoint's spacing, cropped to the body, per-sequence robust normalisation).

**Reference grid.** Outputs are written on the grid of the case's *reference sequence*: its first
available sequence in the model's vocabulary order, with that file's exact affine and shape. A result
computed on the common preprocessing grid is brought back through the two affines (never by array
index): labels by nearest neighbour, synthesised intensities trilinearly; voxels of the reference grid
outside the preprocessed (body-cropped) grid are 0 (background).

**Classification** runs on the lesion-centred ROI: the manifest's ``lesion_x/y/z``, else the centre of
label 2 of the case's mask (used only to locate the lesion, never as model input), else the body centre
(reported in ``roi_source``).

**Segmentation** runs MONAI sliding-window inference of the segmentation head over the whole
preprocessed volume (labels 0 background, 1 liver, 2 lesion). Its default overlap is imputation's
(below): on CHAOS T2 it raised the pretrained model's liver Dice from 0.885 to 0.896 over overlap 0.25,
on every fold, from the same weights (results/chaos_overlap_4mm).

**Imputation** tiles the preprocessed volume with ROI-sized windows (MONAI ``sliding_window_inference``,
Gaussian blending). In each window the pretrained masked-modality autoencoder sees every token of the
case's other sequences and its decoder predicts every patch of the target
(:meth:`~mrfound.models.mae.MaskedModalityAutoencoder.reconstruct`; norm-pix models predict each patch's
mean and std with their stats head, so the output is in intensities, not per-patch z-scores). The
default window overlap makes the window stride an odd multiple of half a patch, so patch borders of
neighbouring windows do not coincide and the blend smooths the patch grid. If the case already has
the target sequence, it is hidden from the model (synthesis uses only the other sequences), which is
how imputation is evaluated.

A checkpoint calibrated by ``mrfound calibrate`` (:mod:`mrfound.calibration`) carries, per sequence,
how much of the synthesis' local contrast to keep around a Gaussian local mean and how to scale that mean
(:func:`shrink_local_contrast`); ``impute`` applies it by default (``local_contrast="auto"``), and
``"none"`` or an explicit ``(gain, sigma mm[, level])`` override it.

Intensities of synthesised sequences are in the **case's normalised units** of preprocessing: per
sequence, 0 and 1 are the 1st and 99th intensity percentiles inside the body (``PreprocessConfig.
percentiles``), values clipped to ``PreprocessConfig.clip`` (default [0, 1.5]); air is ~0. A missing
sequence's scanner scale is unknown, so no conversion back to scanner units is attempted.

**Output folders** are safe to share: every file is written atomically; ``predict`` builds its results in
a private temporary sub-folder of ``--out`` and publishes them under a lock file
(``--out/.predict.lock``, :mod:`filelock`), so two concurrent runs on one folder never interleave.
Cases are streamed (one volume in memory at a time, plus a batch of ROI crops), so memory does not
grow with the manifest.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from mrfound.errors import CheckpointError, ConfigError, ManifestError, MrfoundError

if TYPE_CHECKING:  # pragma: no cover
    import nibabel as nib
    import pandas as pd

    from mrfound.data.manifest import Case, Manifest
    from mrfound.pipeline import MRFoundModel

__all__ = [
    "ImputeSummary",
    "PredictSummary",
    "PreparedCase",
    "default_overlap",
    "impute",
    "impute_manifest",
    "keep_largest_foreground",
    "model_kind",
    "predict",
    "predict_manifest",
    "prepare_case",
    "resample_to_grid",
    "safe_name",
    "segment",
    "synthesise_volume",
]

ON_ERROR = ("raise", "skip", "stop")
"""``raise`` (or its synonym ``stop``): the first unusable case is an error; ``skip``: set it aside."""
LOCK_NAME = ".predict.lock"
_RUN_PREFIX = ".predict-"


# ----------------------------------------------------------------------------------------------------
# model kinds


def model_kind(model: MRFoundModel) -> str:
    """What a loaded checkpoint can do: ``classifier``, ``segmenter``, ``autoencoder`` or ``encoder``."""
    arch = str(model.config.get("architecture", ""))
    return {
        "classifier": "classifier",
        "segmenter": "segmenter",
        "masked_modality_autoencoder": "autoencoder",
    }.get(arch, "encoder")


def _require(model: MRFoundModel, kinds: Sequence[str], what: str) -> str:
    kind = model_kind(model)
    if kind not in kinds:
        hint = {
            "predict": "a fine-tuned checkpoint (mrfound finetune --task classify|segment, RUN/final)",
            "segment": "a segmentation checkpoint (mrfound finetune --task segment, RUN/final)",
            "impute": "a pretrained checkpoint (mrfound pretrain, RUN/final), which keeps the MAE decoder",
        }[what]
        raise CheckpointError(
            f"this checkpoint is a {model.config.get('architecture')!r} model, which cannot {what}; "
            f"use {hint}"
        )
    return kind


# ----------------------------------------------------------------------------------------------------
# cases


def safe_name(case: str) -> str:
    """A file-name-safe form of a case id (a short hash is added when characters had to be replaced)."""
    clean = re.sub(r"[^A-Za-z0-9._-]", "_", str(case)).strip(".") or "case"
    if clean != str(case):
        clean = f"{clean}-{hashlib.sha1(str(case).encode()).hexdigest()[:8]}"
    return clean


def _is_array_pair(value: Any) -> bool:
    return (
        isinstance(value, tuple | list)
        and len(value) == 2
        and not isinstance(value[0], str | os.PathLike)
        and np.ndim(value[1]) == 2
    )


@dataclasses.dataclass
class _CaseInput:
    """A case's inputs with canonical sequence names (vocabulary order)."""

    case: str
    sources: dict[str, Any]
    mask: Any = None
    lesion_xyz: tuple[float, float, float] | None = None
    manifest_case: Case | None = None


def _case_input(
    model: MRFoundModel,
    case: Any,
    *,
    case_id: str | None = None,
    mask: Any = None,
    lesion_xyz: tuple[float, float, float] | None = None,
) -> _CaseInput:
    vocab = model.vocabulary
    if hasattr(case, "sequences") and hasattr(case, "case"):
        sources = {s: case.sequences[s] for s in vocab.sequences if s in case.sequences}
        if not sources:
            raise ManifestError(
                f"no sequence of the model ({', '.join(vocab.sequences)}) in this case", case=case.case
            )
        return _CaseInput(
            str(case.case),
            sources,
            case.mask if mask is None else mask,
            case.lesion_xyz if lesion_xyz is None else lesion_xyz,
            case,
        )
    if not isinstance(case, Mapping) or not case:
        raise MrfoundError(
            "a case must be a manifest Case or a non-empty dict of sequence -> path or (array, affine)"
        )
    sources: dict[str, Any] = {}
    for name, value in case.items():
        if value is None or (isinstance(value, str) and not value):
            continue
        seq = vocab.canonical_sequence(str(name))
        if seq is None:
            raise ConfigError(f"unknown sequence {name!r}; this model knows {', '.join(vocab.sequences)}")
        if seq in sources:
            raise ConfigError(f"sequence {seq!r} given twice (as {name!r})")
        if isinstance(value, np.ndarray | torch.Tensor):
            raise MrfoundError(
                f"sequence {name!r}: a bare array has no affine; pass (array, affine) so the result can be "
                "put back on the case's grid"
            )
        if not _is_array_pair(value) and not isinstance(value, str | os.PathLike):
            raise MrfoundError(f"sequence {name!r}: expected a path or an (array, affine) pair")
        sources[seq] = value
    if not sources:
        raise MrfoundError("the case has no sequence")
    ordered = {s: sources[s] for s in vocab.sequences if s in sources}
    return _CaseInput(case_id or "case", ordered, mask, lesion_xyz)


def _geometry(value: Any) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Affine and 3D shape of a path or an (array, affine) pair (NIfTI/DICOM header only)."""
    if _is_array_pair(value):
        shape = tuple(int(s) for s in np.shape(value[0]))
        if len(shape) == 4 and shape[-1] == 1:
            shape = shape[:3]
        if len(shape) != 3:
            raise ManifestError(f"expected a 3D array, got shape {shape}")
        return np.asarray(value[1], dtype=np.float64), shape  # type: ignore[return-value]
    from mrfound.data.readers import read_header

    header = read_header(value)
    return np.asarray(header.affine, dtype=np.float64), tuple(int(s) for s in header.shape)  # type: ignore


def _lesion_from_mask(mask: Any) -> tuple[float, float, float] | None:
    """World (RAS mm) centre of label 2 of a label map, or ``None`` when it has none."""
    from mrfound.data.readers import read_image, voxel_to_world

    if _is_array_pair(mask):
        arr, affine = np.asarray(mask[0]), np.asarray(mask[1], dtype=np.float64)
    else:
        try:
            arr, affine = read_image(mask)
        except ManifestError as e:
            raise ManifestError(e.problem, column="mask", path=e.path) from e
    idx = np.argwhere(np.rint(arr) == 2)
    if not len(idx):
        return None
    return tuple(float(v) for v in voxel_to_world(idx.mean(0), affine))  # type: ignore[return-value]


@dataclasses.dataclass
class PreparedCase:
    """A preprocessed case with what is needed to put results back on its own grid.

    Attributes:
        case: Case id.
        sample: :func:`~mrfound.data.preprocess.load_case_arrays` output (common grid).
        reference: Reference sequence (first available in vocabulary order).
        ref_affine: Its 4x4 affine.
        ref_shape: Its 3D shape.
        sequences_used: Available sequences given to the model, vocabulary order.
        roi_source: Where the classification ROI is centred: ``lesion_xyz``, ``mask`` or ``body``.
    """

    case: str
    sample: dict[str, Any]
    reference: str
    ref_affine: np.ndarray
    ref_shape: tuple[int, int, int]
    sequences_used: list[str]
    roi_source: str = "body"


def prepare_case(
    model: MRFoundModel,
    case: Any,
    *,
    case_id: str | None = None,
    mask: Any = None,
    lesion_xyz: tuple[float, float, float] | None = None,
    exclude: Sequence[str] = (),
    need_lesion: bool = False,
) -> PreparedCase:
    """Preprocess a case for inference (see the module docstring).

    Args:
        model: The loaded model (its vocabulary and preprocessing are used).
        case: A manifest ``Case`` or a dict ``sequence -> path | (array, affine)``.
        case_id: Id for a dict case (default ``"case"``).
        mask: Optional label map used only to locate the target lesion (label 2).
        lesion_xyz: Lesion centre, world mm (RAS); wins over ``mask``.
        exclude: Sequences left out of the model input (e.g. the imputation target); they still count
            for the reference grid.
        need_lesion: Locate the lesion (classification); otherwise the mask is not read at all.

    Raises:
        ManifestError: naming the case (and column) when a file cannot be used.
    """
    from mrfound.data.preprocess import load_case_arrays

    ci = _case_input(model, case, case_id=case_id, mask=mask, lesion_xyz=lesion_xyz)
    reference = next(iter(ci.sources))
    try:
        ref_affine, ref_shape = _geometry(ci.sources[reference])
        inputs = {s: v for s, v in ci.sources.items() if s not in set(exclude)}
        if not inputs:
            raise ManifestError(
                f"the case has only {', '.join(exclude)}; at least one other sequence is needed"
            )
        lesion, roi_source = ci.lesion_xyz, "lesion_xyz"
        if need_lesion and lesion is None and ci.mask is not None:
            lesion, roi_source = _lesion_from_mask(ci.mask), "mask"
        if lesion is None:
            roi_source = "body"
        sample = load_case_arrays(inputs, model.preprocessing, model.vocabulary, lesion_xyz=lesion)
    except ManifestError as e:
        column = e.column
        if column is None and e.path is not None:
            column = next((s for s, p in ci.sources.items() if str(p) == e.path), None)
        raise ManifestError(e.problem, case=ci.case, column=column, path=e.path) from e
    except MrfoundError as e:
        raise ManifestError(str(e), case=ci.case) from e
    used = [s for s in model.sequences if s in inputs]
    return PreparedCase(ci.case, sample, reference, ref_affine, ref_shape, used, roi_source)


# ----------------------------------------------------------------------------------------------------
# resampling back to the reference grid


def resample_to_grid(
    array: np.ndarray,
    src_affine: np.ndarray,
    dst_affine: np.ndarray,
    dst_shape: Sequence[int],
    *,
    nearest: bool,
) -> np.ndarray:
    """Resample a 3D array from its grid onto another through the affines (zeros outside).

    Axis-aligned grid pairs (flips, permutations, spacings, shifts) use the data layer's separable
    interpolation; oblique pairs MONAI ``ResampleToMatch``. Both map voxel centres through the affines.

    Args:
        array: (X, Y, Z) values on the source grid.
        src_affine: Source voxel -> world matrix.
        dst_affine: Destination voxel -> world matrix.
        dst_shape: Destination shape.
        nearest: Nearest neighbour (labels) instead of trilinear.

    Returns:
        float32 (dst_shape) array.
    """
    from mrfound.data.preprocess import separable_resample

    shape = tuple(int(s) for s in dst_shape)
    out = separable_resample(np.asarray(array, dtype=np.float32), src_affine, dst_affine, shape, nearest)
    if out is not None:
        return out
    import warnings

    from monai.data import MetaTensor
    from monai.transforms import ResampleToMatch

    src = MetaTensor(
        torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None],
        affine=torch.as_tensor(np.asarray(src_affine, dtype=np.float64)),
    )
    dst = MetaTensor(
        torch.zeros(1, 1, 1, 1).expand(1, *shape),
        affine=torch.as_tensor(np.asarray(dst_affine, dtype=np.float64)),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = ResampleToMatch(mode="nearest" if nearest else "bilinear", padding_mode="zeros")(src, dst)
    return np.asarray(res.array if hasattr(res, "array") else res, dtype=np.float32)[0]


def _labels_to_reference(labels: np.ndarray, prepared: PreparedCase) -> np.ndarray:
    out = resample_to_grid(
        labels, prepared.sample["affine"], prepared.ref_affine, prepared.ref_shape, nearest=True
    )
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _nifti(array: np.ndarray, affine: np.ndarray) -> nib.Nifti1Image:
    import nibabel as nib

    img = nib.Nifti1Image(array, np.asarray(affine, dtype=np.float64))
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm")
    return img


def _save_nifti(path: Path, array: np.ndarray, affine: np.ndarray) -> Path:
    import nibabel as nib

    from mrfound.utils.io import atomic_write_with

    img = _nifti(array, affine)
    return atomic_write_with(path, lambda tmp: nib.save(img, str(tmp)))


# ----------------------------------------------------------------------------------------------------
# model calls


@torch.no_grad()
def _classify_batch(model: MRFoundModel, images: list[np.ndarray], avails: list[np.ndarray]) -> np.ndarray:
    image = torch.from_numpy(np.stack(images)).to(model.device)
    available = torch.from_numpy(np.stack(avails)).to(model.device)
    return model.model.predict_proba(image, available).float().cpu().numpy()


def _crop(model: MRFoundModel, prepared: PreparedCase) -> tuple[np.ndarray, np.ndarray]:
    from mrfound.data.preprocess import crop_lesion

    cropped = crop_lesion(prepared.sample, model.roi_shape[0])
    return np.asarray(cropped["image"], dtype=np.float32), np.asarray(cropped["available"], dtype=bool)


def keep_largest_foreground(labels: np.ndarray) -> np.ndarray:
    """Keep the largest 26-connected component of the foreground (every label > 0), zero the rest.

    The liver is one organ: isolated islands (spleen or stomach mistaken for liver, lesion blobs outside
    it) are false positives, and dropping them is the usual post-processing of liver segmentation
    (nnU-Net keeps it when it helps cross-validation). Labels inside the kept component are unchanged,
    so lesions within the liver survive. MONAI's ``KeepLargestConnectedComponent`` needs scikit-image;
    ``scipy.ndimage`` does the same here.

    Args:
        labels: Integer label map (any shape).

    Returns:
        A copy with every voxel outside the largest foreground component set to 0.
    """
    from scipy import ndimage

    labels = np.asarray(labels)
    comp, n = ndimage.label(labels > 0, structure=np.ones((3,) * labels.ndim, dtype=bool))
    if n <= 1:
        return labels.copy()
    sizes = np.bincount(comp.ravel())
    sizes[0] = 0
    return np.where(comp == int(np.argmax(sizes)), labels, 0).astype(labels.dtype)


@torch.no_grad()
def _segment_prepared(
    model: MRFoundModel, prepared: PreparedCase, overlap: float | None, sw_batch_size: int
) -> np.ndarray:
    """Labels on the common grid (X, Y, Z) uint8 (``overlap`` None: :func:`default_overlap`)."""
    image = torch.from_numpy(np.asarray(prepared.sample["image"], dtype=np.float32))[None].to(model.device)
    available = torch.from_numpy(np.asarray(prepared.sample["available"], dtype=bool))[None].to(model.device)
    labels = model.model.segment(image, available, overlap=overlap, sw_batch_size=sw_batch_size)
    return labels[0, 0].cpu().numpy().astype(np.uint8)


def _reference_labels(
    model: MRFoundModel,
    prepared: PreparedCase,
    overlap: float | None,
    sw_batch_size: int,
    largest_component: bool,
) -> np.ndarray:
    """Labels on the reference sequence's grid, islands dropped there (what the user gets) if asked."""
    labels = _labels_to_reference(_segment_prepared(model, prepared, overlap, sw_batch_size), prepared)
    return keep_largest_foreground(labels) if largest_component else labels


def default_overlap(roi: int, patch: int) -> float:
    """Window overlap whose stride is an odd multiple of half a patch, near 40 % of the window.

    Patch borders of neighbouring windows then fall half a patch apart, so blending averages out the
    patch grid of the patch-wise decoder (e.g. ROI 64, patch 16: stride 24, overlap 0.625). The default
    of imputation and segmentation: half the stride of overlap 0.25, so about 8x its windows.
    """
    half = max(patch // 2, 1)
    k = max(1, int(round((0.4 * roi / half - 1) / 2)))
    stride = min((2 * k + 1) * half, roi)
    return float(1.0 - (stride + 0.5) / roi)  # + 0.5: MONAI floors roi * (1 - overlap)


@torch.no_grad()
def synthesise_volume(
    mae: torch.nn.Module,
    image: np.ndarray | torch.Tensor,
    available: np.ndarray | torch.Tensor,
    target: int,
    *,
    overlap: float | None = None,
    sw_batch_size: int = 4,
    device: torch.device | str | None = None,
    clip: tuple[float, float] | None = None,
    local_contrast: tuple[float, ...] | None = None,
) -> np.ndarray:
    """Synthesise one sequence over a whole preprocessed volume with a masked-modality autoencoder.

    Args:
        mae: A :class:`~mrfound.models.mae.MaskedModalityAutoencoder` (eval mode).
        image: (S, X, Y, Z) preprocessed volume (any size; windows are zero-padded at the borders).
        available: (S,) bool; the target channel is hidden even if available.
        target: Vocabulary index of the sequence to synthesise.
        overlap: Sliding-window overlap (default :func:`default_overlap`).
        sw_batch_size: Windows per forward pass.
        device: Torch device (default: the model's).
        clip: Clip the result to this range (normalised units), e.g. the preprocessing ``clip``.
        local_contrast: ``(gain, sigma in voxels[, level])``: after clipping, keep only ``gain`` of the
            local contrast and scale the local mean by ``level`` (:func:`shrink_local_contrast`; clipped
            again); default: as decoded.

    Returns:
        (X, Y, Z) float32 synthesised intensities (normalised units).
    """
    from monai.inferers import sliding_window_inference

    cfg = mae.encoder_config
    dev = torch.device(device) if device is not None else next(mae.parameters()).device
    img = torch.as_tensor(image, dtype=torch.float32)
    src = torch.as_tensor(available, dtype=torch.bool).clone()
    s = img.shape[0]
    if not 0 <= target < s:
        raise ConfigError(f"target index {target} outside the {s} sequences")
    src[target] = False
    if not bool(src.any()):
        raise MrfoundError("no available sequence other than the target to synthesise from")
    img = torch.where(src.view(s, 1, 1, 1), img, torch.zeros_like(img))[None].to(dev)
    src_b = src[None].to(dev)
    tmask = torch.zeros(s, dtype=torch.bool, device=dev)
    tmask[target] = True
    roi = tuple(cfg.img_shape)
    if overlap is None:
        overlap = default_overlap(min(roi), cfg.patch_size)

    def predictor(x: torch.Tensor) -> torch.Tensor:
        out = mae.reconstruct(x, src_b.expand(x.shape[0], -1), tmask)
        return out[:, target : target + 1]

    out = sliding_window_inference(img, roi, sw_batch_size, predictor, overlap=overlap, mode="gaussian")
    vol = out[0, 0].float().cpu().numpy()
    if clip is not None:
        np.clip(vol, clip[0], clip[1], out=vol)
    return apply_local_contrast(vol, local_contrast, clip)


LOCAL_CONTRAST_GAINS = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4)
"""Gains :func:`choose_local_contrast` tries by default (1 = the synthesis as decoded)."""

LOCAL_CONTRAST_LEVELS = (0.8, 0.85, 0.9, 0.95, 1.0, 1.05, 1.1, 1.15, 1.2, 1.25, 1.3)
"""Levels (scales of the local mean) :func:`choose_local_contrast` tries by default (1 = as decoded)."""


def shrink_local_contrast(
    volume: np.ndarray, gain: float, sigma: float, level: float = 1.0
) -> np.ndarray:
    """``level * G_sigma(volume) + gain * (volume - G_sigma(volume))``: a synthesis' local contrast scaled by
    ``gain`` and its local mean by ``level``.

    A synthesis places vessels, lesion edges and texture where the *source* sequences show them, but the
    hidden sequence was acquired in another breath-hold, with its own noise and (for a contrast phase)
    its own bolus timing, so each such detail is uncertain in place and strength; the prediction with the
    least squared error then has less local contrast than a sharp guess. Scaling the deviations from a
    Gaussian local mean is that shrinkage. ``level`` corrects the brightness a decoder gets wrong
    alike on every case (e.g. an under-trained one that draws the pre-contrast liver too dark); the
    numbers are chosen on cases where the truth is known (:func:`choose_local_contrast`). With ``level``
    1 it is a convex combination, so values stay in the input's range.

    Args:
        volume: (X, Y, Z) synthesis.
        gain: Share of the local contrast kept, in [0, 1] (1 and ``level`` 1 return ``volume`` unchanged).
        sigma: Gaussian width of the local mean, in voxels (> 0).
        level: Scale of the local mean, in (0, 4].

    Returns:
        float32 volume of the same shape.
    """
    from scipy.ndimage import gaussian_filter

    _check_local_contrast(gain, sigma, "voxels", level)
    vol = np.asarray(volume, dtype=np.float32)
    if gain == 1.0 and level == 1.0:
        return vol
    low = gaussian_filter(vol, sigma, mode="nearest")
    return (gain * vol + (level - gain) * low).astype(np.float32)


def apply_local_contrast(
    volume: np.ndarray, local_contrast: Sequence[float] | None, clip: Sequence[float] | None = None
) -> np.ndarray:
    """:func:`shrink_local_contrast` with ``(gain, sigma in voxels[, level])`` (None: ``volume`` as it is),
    clipped again to ``clip``, since a level above 1 can leave the range."""
    if local_contrast is None:
        return volume
    vol = shrink_local_contrast(volume, *local_contrast)
    if clip is not None:
        vol = np.clip(vol, clip[0], clip[1])
    return vol


def masked_psnr(pred: np.ndarray, truth: np.ndarray, mask: np.ndarray, peak: float = 1.0) -> float:
    """PSNR (dB) of ``pred`` against ``truth`` inside ``mask`` (NaN for an empty mask); ``peak`` 1 is the
    normalised units' data range, as :func:`choose_local_contrast` scores."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return float("nan")
    d = np.asarray(pred, np.float64)[mask] - np.asarray(truth, np.float64)[mask]
    return float(10.0 * np.log10(peak**2 / max(float(np.mean(d * d)), 1e-12)))


def _check_local_contrast(gain: float, sigma: float, unit: str, level: float = 1.0) -> None:
    if not 0.0 <= gain <= 1.0:
        raise ConfigError(f"local-contrast gain must be in [0, 1], got {gain}")
    if not sigma > 0:
        raise ConfigError(f"local-contrast sigma must be > 0 {unit}, got {sigma}")
    if not 0.0 < level <= 4.0:
        raise ConfigError(f"local-contrast level must be in (0, 4], got {level}")


def local_contrast_mse(
    synthesis: np.ndarray,
    truth: np.ndarray,
    region: np.ndarray,
    sigmas: Sequence[float],
    gains: Sequence[float] = LOCAL_CONTRAST_GAINS,
    levels: Sequence[float] = (1.0,),
) -> np.ndarray:
    """Mean squared error in ``region`` of :func:`shrink_local_contrast` for every (sigma, gain, level).

    Returns:
        (len(sigmas), len(gains), len(levels)) float64 array; the input of :func:`choose_local_contrast`.
    """
    from scipy.ndimage import gaussian_filter

    region = np.asarray(region, dtype=bool)
    if not region.any():
        raise ConfigError("local_contrast_mse: the region is empty")
    vol = np.asarray(synthesis, dtype=np.float64)
    d = vol[region] - np.asarray(truth, dtype=np.float64)[region]
    a = np.asarray(levels, dtype=np.float64)[None, :] - 1.0  # (1, L)
    b = np.asarray(gains, dtype=np.float64)[:, None] - 1.0  # (G, 1)
    out = np.empty((len(sigmas), len(gains), len(levels)))
    for i, sg in enumerate(sigmas):
        # level * lo + gain * hi - truth = d + (level - 1) * lo + (gain - 1) * hi, expanded in moments
        lo = gaussian_filter(vol, sg, mode="nearest")[region]
        hi = vol[region] - lo
        dd, ll, hh = np.mean(d * d), np.mean(lo * lo), np.mean(hi * hi)
        dl, dh, lh = np.mean(d * lo), np.mean(d * hi), np.mean(lo * hi)
        out[i] = dd + a * a * ll + b * b * hh + 2 * (a * dl + b * dh + a * b * lh)
    return np.maximum(out, 0.0)


def choose_local_contrast(
    mse_per_case: Sequence[np.ndarray],
    sigmas: Sequence[float],
    gains: Sequence[float] = LOCAL_CONTRAST_GAINS,
    levels: Sequence[float] = (1.0,),
) -> dict[str, float]:
    """The (gain, sigma, level) with the best mean PSNR (data range 1) over cases, from
    :func:`local_contrast_mse`.

    Returns:
        ``gain``, ``sigma``, ``level``, ``psnr`` (mean over the cases at that setting) and
        ``psnr_as_decoded`` (gain 1, level 1; NaN if the grid lacks it).
    """
    if not mse_per_case:
        raise ConfigError("choose_local_contrast needs at least one case")
    tables = [np.asarray(m, dtype=np.float64) for m in mse_per_case]
    tables = [m[..., None] if m.ndim == 2 else m for m in tables]
    psnr = np.mean([-10.0 * np.log10(np.maximum(m, 1e-12)) for m in tables], axis=0)
    i, j, k = np.unravel_index(int(np.argmax(psnr)), psnr.shape)
    g1 = list(gains).index(1.0) if 1.0 in gains else None
    l1 = list(levels).index(1.0) if 1.0 in levels else None
    return {
        "gain": float(gains[j]),
        "sigma": float(sigmas[i]),
        "level": float(levels[k]),
        "psnr": float(psnr[i, j, k]),
        "psnr_as_decoded": float(psnr[0, g1, l1]) if g1 is not None and l1 is not None else float("nan"),
    }


def _target_index(model: MRFoundModel, sequence: str) -> tuple[str, int]:
    canon = model.vocabulary.canonical_sequence(str(sequence))
    if canon is None:
        raise ConfigError(f"unknown sequence {sequence!r}; this model knows {', '.join(model.sequences)}")
    return canon, model.sequences.index(canon)


# ----------------------------------------------------------------------------------------------------
# single-case API (MRFoundModel.predict / segment / impute)


def predict(
    model: MRFoundModel,
    case_or_manifest: Any,
    *,
    case_id: str | None = None,
    lesion_xyz: tuple[float, float, float] | None = None,
    mask: Any = None,
    batch_size: int = 8,
    overlap: float | None = None,
    largest_component: bool = False,
) -> dict[str, Any] | pd.DataFrame:
    """Class probabilities (classification checkpoint) or a segmentation (segmentation checkpoint).

    Args:
        model: A model from :func:`mrfound.load_pretrained`.
        case_or_manifest: A case (see the module docstring), or a manifest (``Manifest`` or CSV path).
        case_id: Id for a dict case.
        lesion_xyz: Lesion centre (world mm, RAS) for the classification ROI.
        mask: Label map locating the lesion (label 2) when ``lesion_xyz`` is not given.
        batch_size: ROI crops per forward pass (manifest input).
        overlap: Sliding-window overlap (segmentation; default :func:`default_overlap`).
        largest_component: Keep only the largest connected foreground component (segmentation; see
            :func:`keep_largest_foreground`).

    Returns:
        For a case: ``{"case", "label_pred", "probabilities": {class: p}, "sequences_used", "roi_source"}``
        (classifier) or ``{"case", "segmentation": Nifti1Image, "reference_sequence", "sequences_used",
        "liver_ml", "lesion_ml"}`` (segmenter). For a manifest: a DataFrame shaped like
        ``predictions.csv`` (segmentations are not kept; use :func:`predict_manifest` to write them).
    """
    kind = _require(model, ("classifier", "segmenter"), "predict")
    if isinstance(case_or_manifest, str | os.PathLike) or _is_manifest(case_or_manifest):
        import pandas as pd

        rows = [
            r
            for r in _predict_rows(
                model,
                _as_manifest(model, case_or_manifest),
                kind,
                batch_size,
                overlap,
                None,
                "raise",
                largest_component=largest_component,
            )
            if "error" not in r
        ]
        frame = pd.DataFrame(rows, columns=_columns(model, kind))
        return frame.drop(columns=["segmentation"], errors="ignore")
    prepared = prepare_case(
        model,
        case_or_manifest,
        case_id=case_id,
        mask=mask,
        lesion_xyz=lesion_xyz,
        need_lesion=kind == "classifier",
    )
    if kind == "classifier":
        image, available = _crop(model, prepared)
        probs = _classify_batch(model, [image], [available])[0]
        classes = list(model.model.classes)
        return {
            "case": prepared.case,
            "label_pred": classes[int(np.argmax(probs))],
            "probabilities": {c: float(p) for c, p in zip(classes, probs)},
            "sequences_used": prepared.sequences_used,
            "roi_source": prepared.roi_source,
        }
    labels = _reference_labels(model, prepared, overlap, 2, largest_component)
    return {
        "case": prepared.case,
        "segmentation": _nifti(labels, prepared.ref_affine),
        "reference_sequence": prepared.reference,
        "sequences_used": prepared.sequences_used,
        **_volumes(labels, prepared.ref_affine),
    }


def segment(
    model: MRFoundModel,
    case: Any,
    *,
    overlap: float | None = None,
    sw_batch_size: int = 2,
    largest_component: bool = False,
) -> nib.Nifti1Image:
    """Liver/lesion label map (0 background, 1 liver, 2 lesion) on the case's reference grid.

    Args:
        model: A segmentation checkpoint from :func:`mrfound.load_pretrained`.
        case: A case (see the module docstring).
        overlap: Sliding-window overlap (default :func:`default_overlap`).
        sw_batch_size: Windows per forward pass.
        largest_component: Keep only the largest connected foreground component
            (:func:`keep_largest_foreground`).

    Returns:
        ``nibabel.Nifti1Image`` (uint8) with the reference sequence's affine and shape.
    """
    _require(model, ("segmenter",), "segment")
    prepared = prepare_case(model, case)
    labels = _reference_labels(model, prepared, overlap, sw_batch_size, largest_component)
    return _nifti(labels, prepared.ref_affine)


def impute(
    model: MRFoundModel,
    case: Any,
    sequence: str,
    *,
    overlap: float | None = None,
    sw_batch_size: int = 4,
    local_contrast: Sequence[float] | str | None = "auto",
) -> nib.Nifti1Image:
    """Synthesise ``sequence`` for a case from its other sequences, on the case's reference grid.

    Args:
        model: A pretrained (masked-modality autoencoder) checkpoint.
        case: A case (see the module docstring); if it has ``sequence``, that one is hidden.
        sequence: Sequence to synthesise (name or alias).
        overlap: Sliding-window overlap (default :func:`default_overlap`).
        sw_batch_size: Windows per forward pass.
        local_contrast: ``(gain, sigma in mm[, level])``: keep only ``gain`` of the synthesis' contrast
            around its Gaussian local mean and scale that mean by ``level`` (default 1)
            (:func:`shrink_local_contrast`, on the preprocessing grid);
            ``"auto"`` (default): the checkpoint's calibration for ``sequence``
            (``model.local_contrast``, written by ``mrfound calibrate``), as decoded if it has none;
            ``None`` or ``"none"``: as decoded.

    Returns:
        ``nibabel.Nifti1Image`` (float32, normalised units) with the reference sequence's affine and shape.
    """
    img, _ = _impute_case(
        model, case, sequence, overlap=overlap, sw_batch_size=sw_batch_size, local_contrast=local_contrast
    )
    return img


def _impute_case(
    model: MRFoundModel,
    case: Any,
    sequence: str,
    *,
    overlap: float | None,
    sw_batch_size: int,
    case_id: str | None = None,
    local_contrast: Sequence[float] | str | None = "auto",
) -> tuple[nib.Nifti1Image, PreparedCase]:
    _require(model, ("autoencoder",), "impute")
    target, t_idx = _target_index(model, sequence)
    _, lc = _local_contrast_for(model, target, local_contrast)
    prepared = prepare_case(model, case, case_id=case_id, exclude=(target,))
    out = _synthesise_on_reference_grid(model, prepared, t_idx, overlap, sw_batch_size, lc)
    return _nifti(out.astype(np.float32), prepared.ref_affine), prepared


LOCAL_CONTRAST_MODES = ("auto", "none")
"""String values of ``local_contrast``: the checkpoint's calibration, or the synthesis as decoded."""


def resolve_local_contrast(
    model: MRFoundModel, sequence: str, local_contrast: Sequence[float] | str | None
) -> Sequence[float] | None:
    """The ``(gain, sigma mm[, level])`` to apply to a synthesis of ``sequence`` (None: as decoded).

    ``"auto"`` takes the checkpoint's calibration of that sequence (``model.local_contrast``), if any;
    ``"none"`` / ``None``: as decoded; a ``(gain, sigma mm[, level])`` is used as given.
    """
    if isinstance(local_contrast, str):
        if local_contrast not in LOCAL_CONTRAST_MODES:
            raise ConfigError(
                "local_contrast must be (gain, sigma mm[, level]) or one of "
                f"{', '.join(LOCAL_CONTRAST_MODES)}, got {local_contrast!r}"
            )
        if local_contrast == "none":
            return None
        return getattr(model, "local_contrast", {}).get(sequence)
    return local_contrast


def _local_contrast_mm(local_contrast: Sequence[float] | None) -> tuple[float, float, float] | None:
    """``(gain, sigma mm[, level])`` checked and completed to ``(gain, sigma mm, level)``."""
    if local_contrast is None:
        return None
    try:
        values = [float(v) for v in local_contrast]
    except (TypeError, ValueError):
        values = []
    if len(values) not in (2, 3):
        raise ConfigError(f"local_contrast must be (gain, sigma in mm[, level]), got {local_contrast!r}")
    gain, sigma_mm, level = (*values, 1.0)[:3]
    _check_local_contrast(gain, sigma_mm, "mm", level)
    return gain, sigma_mm, level


def _local_contrast_for(
    model: MRFoundModel, sequence: str, local_contrast: Sequence[float] | str | None
) -> tuple[tuple[float, float, float] | None, tuple[float, float, float] | None]:
    """What to apply to a synthesis of ``sequence``, checked before any case is read: ``(gain, sigma mm,
    level)`` and ``(gain, sigma in preprocessing voxels, level)``, both None for the synthesis as decoded."""
    mm = _local_contrast_mm(resolve_local_contrast(model, sequence, local_contrast))
    if mm is None:
        return None, None
    return mm, (mm[0], mm[1] / float(model.preprocessing.spacing), mm[2])


def _synthesise_on_reference_grid(
    model: MRFoundModel,
    prepared: PreparedCase,
    t_idx: int,
    overlap: float | None,
    sw_batch_size: int,
    local_contrast: tuple[float, float, float] | None = None,
) -> np.ndarray:
    """Synthesise sequence ``t_idx`` of a prepared case and resample it onto its reference grid
    (``local_contrast``: gain and sigma in voxels of the preprocessing grid)."""
    vol = synthesise_volume(
        model.model,
        prepared.sample["image"],
        prepared.sample["available"],
        t_idx,
        overlap=overlap,
        sw_batch_size=sw_batch_size,
        device=model.device,
        clip=tuple(model.preprocessing.clip),
        local_contrast=local_contrast,
    )
    return resample_to_grid(
        vol, prepared.sample["affine"], prepared.ref_affine, prepared.ref_shape, nearest=False
    )


def _volumes(labels: np.ndarray, affine: np.ndarray) -> dict[str, float]:
    voxel_ml = abs(float(np.linalg.det(np.asarray(affine)[:3, :3]))) / 1000.0
    return {
        "liver_ml": round(float((labels == 1).sum()) * voxel_ml, 3),
        "lesion_ml": round(float((labels == 2).sum()) * voxel_ml, 3),
    }


# ----------------------------------------------------------------------------------------------------
# manifests: streaming


def _is_manifest(obj: Any) -> bool:
    from mrfound.data.manifest import Manifest

    return isinstance(obj, Manifest)


def _as_manifest(model: MRFoundModel, manifest: Any) -> Manifest:
    from mrfound.data.manifest import as_manifest

    return as_manifest(manifest, model.vocabulary)


class _PreparedStream(torch.utils.data.Dataset):
    """Cases of a manifest, preprocessed on access; a failing case yields ``{"case", "error"}``."""

    def __init__(
        self, model: MRFoundModel, manifest: Manifest, kind: str, sequence: str | None = None
    ) -> None:
        self.model, self.manifest, self.kind, self.sequence = model, manifest, kind, sequence

    def __len__(self) -> int:
        return len(self.manifest)

    def __getitem__(self, i: int) -> dict[str, Any]:
        case = self.manifest.cases[i]
        try:
            exclude = (self.sequence,) if self.sequence else ()
            prepared = prepare_case(self.model, case, exclude=exclude, need_lesion=self.kind == "classifier")
        except (MrfoundError, OSError) as e:
            return {"case": case.case, "error": " ".join(str(e).split())}
        item: dict[str, Any] = {"case": case.case, "prepared": prepared}
        if self.sequence:
            item["target_present"] = self.sequence in case.sequences
        if self.kind == "classifier":  # keep only the ROI crop: the volume is dropped here
            item["crop"] = _crop(self.model, prepared)
            prepared.sample = {"affine": prepared.sample["affine"]}
        return item


def _identity(x: Any) -> Any:
    return x


def _stream(
    model: MRFoundModel, manifest: Manifest, kind: str, num_workers: int, sequence: str | None = None
) -> Iterator[dict[str, Any]]:
    from torch.utils.data import DataLoader

    ds = _PreparedStream(model, manifest, kind, sequence)
    if num_workers <= 0:
        for i in range(len(ds)):
            yield ds[i]
        return
    loader = DataLoader(ds, batch_size=None, shuffle=False, num_workers=num_workers, collate_fn=_identity)
    yield from loader


def _columns(model: MRFoundModel, kind: str) -> list[str]:
    if kind == "classifier":
        return [
            "case",
            "label_pred",
            *[f"p_{c}" for c in model.model.classes],
            "sequences_used",
            "roi_source",
        ]
    return ["case", "segmentation", "reference_sequence", "sequences_used", "liver_ml", "lesion_ml"]


def _predict_rows(
    model: MRFoundModel,
    manifest: Manifest,
    kind: str,
    batch_size: int,
    overlap: float | None,
    seg_dir: Path | None,
    on_error: str,
    num_workers: int = 0,
    progress: bool | None = None,
    largest_component: bool = False,
) -> Iterator[dict[str, Any]]:
    """Rows of ``predictions.csv`` in manifest order (``{"case", "error"}`` rows for failed cases)."""
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise ConfigError(f"batch size must be >= 1, got {batch_size}")
    classes = list(model.model.classes) if kind == "classifier" else []
    pending: list[dict[str, Any]] = []  # ROI crops waiting for a full batch (cases stay in order)

    def flush() -> Iterator[dict[str, Any]]:
        todo = [p for p in pending if "crop" in p]
        if todo:
            probs = _classify_batch(model, [p["crop"][0] for p in todo], [p["crop"][1] for p in todo])
            for p, pr in zip(todo, probs):
                p["row"] = {
                    "case": p["case"],
                    "label_pred": classes[int(np.argmax(pr))],
                    **{f"p_{c}": float(v) for c, v in zip(classes, pr)},
                    "sequences_used": ";".join(p["prepared"].sequences_used),
                    "roi_source": p["prepared"].roi_source,
                }
        for p in pending:
            yield p.get("row") or {"case": p["case"], "error": p["error"]}
        pending.clear()

    disable = None if progress is None else not progress
    with tqdm(total=len(manifest), desc="predict", unit="case", disable=disable) as bar:
        for item in _stream(model, manifest, kind, num_workers):
            bar.update(1)
            if "error" in item:
                if on_error != "skip":
                    raise ManifestError(item["error"] + " (use --on-error skip to skip failing cases)")
                pending.append(item)
                continue
            if kind == "classifier":
                pending.append(item)
                if sum("crop" in p for p in pending) >= batch_size:
                    yield from flush()
                continue
            prepared: PreparedCase = item["prepared"]
            labels = _reference_labels(model, prepared, overlap, 2, largest_component)
            name = f"{safe_name(prepared.case)}.nii.gz"
            if seg_dir is not None:
                _save_nifti(seg_dir / name, labels, prepared.ref_affine)
            yield {
                "case": prepared.case,
                "segmentation": f"segmentations/{name}",
                "reference_sequence": prepared.reference,
                "sequences_used": ";".join(prepared.sequences_used),
                **_volumes(labels, prepared.ref_affine),
            }
            del item, prepared, labels
        yield from flush()


@dataclasses.dataclass
class PredictSummary:
    """What :func:`predict_manifest` did.

    Attributes:
        predictions: Path of ``predictions.csv``.
        n_cases: Cases predicted.
        skipped: ``(case, reason)`` of cases skipped with ``on_error="skip"``.
        segmentations: Segmentation files written (segmentation checkpoints).
        wall_s: Seconds.
    """

    predictions: Path
    n_cases: int
    skipped: list[tuple[str, str]]
    segmentations: list[Path]
    wall_s: float


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.8f}".rstrip("0").rstrip(".") if np.isfinite(v) else ""
    return str(v)


def predict_manifest(
    model: MRFoundModel,
    manifest: Manifest | str | os.PathLike,
    out: str | os.PathLike,
    *,
    batch_size: int = 8,
    on_error: str = "raise",
    overlap: float | None = None,
    num_workers: int = 0,
    merge: bool = False,
    progress: bool | None = None,
    command: str | None = None,
    largest_component: bool = False,
) -> PredictSummary:
    """Predict every case of a manifest and write ``out/predictions.csv`` (+ ``out/segmentations/``).

    Results are built in a private ``out/.predict-*.tmp`` folder and published under ``out/.predict.lock``:
    segmentation files are moved in one by one (each rename is atomic), then ``predictions.csv`` is
    replaced (or, with ``merge``, rows of the same cases replaced and others kept). A failed run publishes
    nothing.

    Args:
        model: A classification or segmentation checkpoint.
        manifest: Manifest or CSV path (read with the model's vocabulary).
        out: Output folder.
        batch_size: ROI crops per forward pass (classification).
        on_error: ``stop`` (first unusable case raises) or ``skip`` (listed in ``out/skipped.csv``).
        overlap: Sliding-window overlap (segmentation; default :func:`default_overlap`).
        num_workers: DataLoader workers preprocessing cases ahead of the model (0 = in this process).
        merge: Keep rows of other cases already in ``out/predictions.csv``.
        progress: Progress bar (default: only on a terminal).
        command: Command line recorded in ``out/predict.json``.
        largest_component: Keep only the largest connected foreground component of each segmentation
            (:func:`keep_largest_foreground`).

    Raises:
        ManifestError: a case cannot be used (``on_error="raise"``), or no case could be predicted.
        CheckpointError: the checkpoint has no classification or segmentation head.
    """
    from filelock import FileLock

    if on_error not in ON_ERROR:
        raise ConfigError(f"on_error must be one of {', '.join(ON_ERROR)}, got {on_error!r}")
    t0 = time.time()
    kind = _require(model, ("classifier", "segmenter"), "predict")
    man = _as_manifest(model, manifest)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    run_dir = out / f"{_RUN_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"
    seg_dir = run_dir / "segmentations"
    seg_dir.mkdir(parents=True)
    columns = _columns(model, kind)
    skipped: list[tuple[str, str]] = []
    n_ok = 0
    try:
        partial = run_dir / "predictions.partial.csv"
        with open(partial, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(columns)
            for row in _predict_rows(
                model,
                man,
                kind,
                batch_size,
                overlap,
                seg_dir,
                on_error,
                num_workers,
                progress,
                largest_component=largest_component,
            ):
                if "error" in row:
                    skipped.append((row["case"], row["error"]))
                    continue
                writer.writerow([_fmt(row.get(c, "")) for c in columns])
                n_ok += 1
            f.flush()
            os.fsync(f.fileno())
        if n_ok == 0:
            first = f": {skipped[0][1]}" if skipped else ""
            raise ManifestError(
                f"no case could be predicted ({len(skipped)} skipped){first}", path=str(man.path)
            )
        os.replace(partial, run_dir / "predictions.csv")  # this run is complete; now wait for the lock
        with FileLock(str(out / LOCK_NAME)):
            segs = _publish(out, run_dir, merge, skipped, model, man, kind, n_ok, command, t0)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    return PredictSummary(out / "predictions.csv", n_ok, skipped, segs, time.time() - t0)


def _publish(
    out: Path,
    run_dir: Path,
    merge: bool,
    skipped: list[tuple[str, str]],
    model: MRFoundModel,
    manifest: Manifest,
    kind: str,
    n_ok: int,
    command: str | None,
    t0: float,
) -> list[Path]:
    """Move a finished run's files into ``out`` (caller holds the lock)."""
    from mrfound.utils.io import atomic_write_json, atomic_write_text, fsync_dir

    segs = []
    files = sorted((run_dir / "segmentations").iterdir())
    if files:
        (out / "segmentations").mkdir(exist_ok=True)
    for f in files:
        os.replace(f, out / "segmentations" / f.name)
        segs.append(out / "segmentations" / f.name)
    if segs:
        fsync_dir(out / "segmentations")
    target = out / "predictions.csv"
    if merge and target.is_file():
        import pandas as pd

        new = pd.read_csv(run_dir / "predictions.csv", dtype=str, keep_default_na=False)
        old = pd.read_csv(target, dtype=str, keep_default_na=False)
        merged = pd.concat([old[~old["case"].isin(set(new["case"]))], new], ignore_index=True).fillna("")
        atomic_write_text(target, merged.to_csv(index=False, lineterminator="\n"))
    else:
        os.replace(run_dir / "predictions.csv", target)
        fsync_dir(out)
    if skipped:
        lines = ["case,reason"] + [_csv_line([c, r]) for c, r in skipped]
        atomic_write_text(out / "skipped.csv", "\n".join(lines) + "\n")
    elif not merge:
        with contextlib.suppress(FileNotFoundError):
            (out / "skipped.csv").unlink()
    atomic_write_json(
        out / "predict.json",
        {
            "command": command,
            "checkpoint": model.config.get("provenance", {}).get("run"),
            "architecture": model.config.get("architecture"),
            "kind": kind,
            "manifest": str(manifest.path) if manifest.path else None,
            "n_cases": n_ok,
            "n_skipped": len(skipped),
            "merge": merge,
            "wall_s": round(time.time() - t0, 3),
        },
    )
    return segs


def _csv_line(values: Sequence[str]) -> str:
    import io

    buf = io.StringIO()
    csv.writer(buf, lineterminator="").writerow(values)
    return buf.getvalue()


@dataclasses.dataclass
class ImputeSummary:
    """What :func:`impute_manifest` did.

    Attributes:
        files: Written NIfTI files.
        table: Path of ``out/imputed_<sequence>.csv`` (case, file, reference sequence, sources).
        skipped: ``(case, reason)`` of skipped cases.
        wall_s: Seconds.
        local_contrast: The ``(gain, sigma mm, level)`` applied, or None (as decoded).
    """

    files: list[Path]
    table: Path
    skipped: list[tuple[str, str]]
    wall_s: float
    local_contrast: tuple[float, float, float] | None = None


def impute_manifest(
    model: MRFoundModel,
    manifest: Manifest | str | os.PathLike,
    sequence: str,
    out: str | os.PathLike,
    *,
    on_error: str = "raise",
    overlap: float | None = None,
    sw_batch_size: int = 4,
    num_workers: int = 0,
    progress: bool | None = None,
    local_contrast: Sequence[float] | str | None = "auto",
) -> ImputeSummary:
    """Synthesise ``sequence`` for every case; write ``out/<case>_<sequence>.nii.gz`` (each atomically).

    Args:
        model: A pretrained (masked-modality autoencoder) checkpoint.
        manifest: Manifest or CSV path.
        sequence: Sequence to synthesise.
        out: Output folder.
        on_error: ``stop`` or ``skip`` (skipped cases listed in the summary table's ``error`` column).
        overlap: Sliding-window overlap (default :func:`default_overlap`).
        sw_batch_size: Windows per forward pass.
        num_workers: DataLoader workers preprocessing ahead.
        progress: Progress bar (default: only on a terminal).
        local_contrast: ``(gain, sigma in mm[, level])``, ``"auto"`` or ``"none"``, see :func:`impute`.
    """
    from tqdm.auto import tqdm

    from mrfound.utils.io import atomic_write_text

    if on_error not in ON_ERROR:
        raise ConfigError(f"on_error must be one of {', '.join(ON_ERROR)}, got {on_error!r}")
    t0 = time.time()
    _require(model, ("autoencoder",), "impute")
    target, t_idx = _target_index(model, sequence)
    applied, lc = _local_contrast_for(model, target, local_contrast)
    man = _as_manifest(model, manifest)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    skipped: list[tuple[str, str]] = []
    rows = [["case", "file", "reference_sequence", "sources", "target_present", "error"]]
    disable = None if progress is None else not progress
    with tqdm(total=len(man), desc=f"impute {target}", unit="case", disable=disable) as bar:
        for item in _stream(model, man, "autoencoder", num_workers, sequence=target):
            bar.update(1)
            if "error" in item:
                if on_error != "skip":
                    raise ManifestError(item["error"] + " (use --on-error skip to skip failing cases)")
                skipped.append((item["case"], item["error"]))
                rows.append([item["case"], "", "", "", "", item["error"]])
                continue
            prepared: PreparedCase = item["prepared"]
            res = _synthesise_on_reference_grid(model, prepared, t_idx, overlap, sw_batch_size, lc)
            path = _save_nifti(out / f"{safe_name(prepared.case)}_{target}.nii.gz", res, prepared.ref_affine)
            files.append(path)
            rows.append(
                [
                    prepared.case,
                    path.name,
                    prepared.reference,
                    ";".join(prepared.sequences_used),
                    str(item["target_present"]),
                    "",
                ]
            )
            del item, prepared, res
    if not files:
        first = f": {skipped[0][1]}" if skipped else ""
        raise ManifestError(f"no case could be imputed ({len(skipped)} skipped){first}", path=str(man.path))
    table = out / f"imputed_{target}.csv"
    atomic_write_text(table, "\n".join(_csv_line(r) for r in rows) + "\n")
    return ImputeSummary(files, table, skipped, time.time() - t0, applied)
