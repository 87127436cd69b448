"""Torch dataset over a manifest, delivering the DESIGN §3 sample, and its collate function.

Sample (``MRDataset[i]``): ``image`` float32 (S, D, H, W) in the vocabulary's order with zeros where a
sequence is missing (D, H, W = the RAS voxel axes of the common grid), ``available`` bool (S,), ``mask``
int64 (1, D, H, W) when the case has one, ``label`` int (-1 if unlabeled), ``case``, ``subject``,
``center`` strings, and ``affine`` float64 (4, 4), the voxel -> world (RAS mm) matrix of the returned
array (so a prediction can be written back as NIfTI).

Random crops draw from ``numpy.random.default_rng([seed, epoch, index])``: reproducible for a given seed,
different for every epoch when :meth:`MRDataset.set_epoch` is called (the training loop should). The
DataLoader worker is deliberately not part of the seed: which worker loads an item changes after a
resume, and the crop must not, or resumed runs would diverge from uninterrupted ones.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from mrfound.data.augment import (
    augment_intensity,
    augment_organ_contrast,
    augment_spatial,
    spatial_context,
)
from mrfound.data.manifest import Manifest, as_manifest
from mrfound.data.preprocess import (
    PreprocessConfig,
    crop_lesion,
    jittered_lesion_crop,
    preprocess_case,
    random_crop,
)
from mrfound.errors import ConfigError

MODES = ("lesion", "random", "full")


class MRDataset(Dataset):
    """Preprocessed, cropped cases of a manifest.

    Args:
        manifest: A :class:`Manifest` or a CSV path.
        config: Preprocessing settings (``roi_size`` sets the crop).
        mode: ``"lesion"`` (lesion-centred ROI, classification), ``"random"`` (random ROI inside the body,
            pretraining) or ``"full"`` (whole volume, segmentation / sliding window).
        cache_dir: Preprocessing cache folder; ``None`` preprocesses on every access (slow: use a cache
            for training).
        samples_per_case: Items per case per epoch (several random crops of one case).
        seed: Seed of the random crops.
        lesion_fraction: ``"random"`` mode only: share of the crops placed around the case's lesion
            position (with a random shift of up to a quarter ROI) instead of anywhere in the body. Uses
            the lesion *position* only, never the label. A lesion fills a few percent of the body, so
            plain random crops rarely show one to a pretraining model that is later asked about lesions.
        background_fraction: ``"random"`` mode only: share of the crops centred on any voxel of the
            volume, air included, instead of a body voxel. Body-centred crops never show a window that
            is mostly air, which a sliding-window segmenter meets at the volume borders (measured effect:
            :class:`mrfound.finetune.config.FinetuneConfig` ``background_crops``).
        intensity_augment: Probability that an item gets a random gamma and gain per available
            sequence (:func:`mrfound.data.augment.augment_intensity`), any mode. Drawn from its own
            seeded stream, so the crops are the same with and without it. For training sets only.
        organ_augment: Probability that the liver (mask label 1) of an item gets its own random gain
            per available sequence (:func:`mrfound.data.augment.augment_organ_contrast`), applied before
            ``intensity_augment``; items without a mask are left alone. Training sets only (it reads the
            label).
        spatial_augment: ``"random"`` and ``"lesion"`` modes: probability that an item is cut from a
            larger crop (margin :func:`mrfound.data.augment.spatial_context`) and rotated and zoomed into the
            ROI with its mask (:func:`mrfound.data.augment.augment_spatial`), before the intensity
            options. Its own seeded stream decides and draws; the ROI is placed exactly as without it
            and the larger crop is that ROI with a margin (``random_crop(context=...)``), and the item's
            ``affine`` is that of the ROI before rotation. For training sets only.
    """

    def __init__(
        self,
        manifest: Manifest | str | os.PathLike,
        config: PreprocessConfig | None = None,
        mode: str = "lesion",
        cache_dir: str | os.PathLike | None = None,
        samples_per_case: int = 1,
        seed: int = 0,
        lesion_fraction: float = 0.0,
        background_fraction: float = 0.0,
        intensity_augment: float = 0.0,
        organ_augment: float = 0.0,
        spatial_augment: float = 0.0,
    ) -> None:
        if mode not in MODES:
            raise ConfigError(f"unknown dataset mode {mode!r}; use one of {', '.join(MODES)}")
        if samples_per_case < 1:
            raise ConfigError(f"samples_per_case must be >= 1, got {samples_per_case}")
        self.manifest = as_manifest(manifest)
        self.vocabulary = self.manifest.vocabulary
        self.config = config or PreprocessConfig()
        if not 0.0 <= float(lesion_fraction) <= 1.0:
            raise ConfigError(f"lesion_fraction must be in [0, 1], got {lesion_fraction}")
        if not 0.0 <= float(background_fraction) <= 1.0 - float(lesion_fraction):
            raise ConfigError(
                f"background_fraction must be in [0, 1 - lesion_fraction] = [0, {1 - lesion_fraction:g}], "
                f"got {background_fraction}"
            )
        if not 0.0 <= float(intensity_augment) <= 1.0:
            raise ConfigError(f"intensity_augment must be in [0, 1], got {intensity_augment}")
        self.intensity_augment = float(intensity_augment)
        if not 0.0 <= float(organ_augment) <= 1.0:
            raise ConfigError(f"organ_augment must be in [0, 1], got {organ_augment}")
        self.organ_augment = float(organ_augment)
        if not 0.0 <= float(spatial_augment) <= 1.0:
            raise ConfigError(f"spatial_augment must be in [0, 1], got {spatial_augment}")
        if spatial_augment > 0 and mode == "full":
            raise ConfigError("spatial_augment needs crops (mode 'random' or 'lesion'), not mode 'full'")
        self.spatial_augment = float(spatial_augment)
        self.mode = mode
        self.lesion_fraction = float(lesion_fraction)
        self.background_fraction = float(background_fraction)
        self.samples_per_case = int(samples_per_case)
        self.seed = int(seed)
        self.epoch = 0
        self.cache = None
        if cache_dir is not None:
            from mrfound.data.cache import PreprocessCache

            self.cache = PreprocessCache(Path(cache_dir), self.config, self.vocabulary)

    def set_epoch(self, epoch: int) -> None:
        """Change the random crops for a new epoch."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.manifest) * self.samples_per_case

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, index])

    def preprocessed(self, case_index: int) -> dict[str, Any]:
        """The whole preprocessed volume of a case (from the cache when there is one)."""
        case = self.manifest.cases[case_index]
        if self.cache is not None:
            return self.cache.get(case)
        return preprocess_case(case, self.config, self.vocabulary)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        ci = index // self.samples_per_case
        case = self.manifest.cases[ci]
        if self.cache is not None and self.mode != "full":
            # crop the stored float16 channels first: converting only the ROI is much cheaper
            from mrfound.data.cache import expand_compact

            arrays = self.cache.get_compact(case)
        else:
            arrays = self.preprocessed(ci)
        roi = self.config.roi_size
        warp_rng = None
        if self.spatial_augment > 0:
            warp_rng = np.random.default_rng([self.seed, self.epoch, index, 3])
            if warp_rng.random() >= self.spatial_augment:
                warp_rng = None
        ctx = spatial_context(roi) if warp_rng is not None else 0
        size = roi + 2 * ctx
        if self.mode == "lesion":
            arrays = crop_lesion(arrays, size)
        elif self.mode == "random":
            rng = self._rng(index)
            # one draw only when a fraction is set, so plain random crops stay as they were
            u = rng.random() if self.lesion_fraction > 0 or self.background_fraction > 0 else 1.0
            if u < self.lesion_fraction:
                arrays = jittered_lesion_crop(arrays, size, rng, max_shift=roi // 4)  # the ROI's jitter
            else:
                anywhere = u < self.lesion_fraction + self.background_fraction
                arrays = random_crop(arrays, roi, rng, anywhere=anywhere, context=ctx)
        if self.cache is not None and self.mode != "full":
            arrays = expand_compact(arrays)
        if warp_rng is not None:
            image, mask = augment_spatial(arrays["image"], arrays.get("mask"), warp_rng, out_size=roi)
            affine = np.array(arrays["affine"], dtype=np.float64, copy=True)
            affine[:3, 3] += affine[:3, :3] @ np.full(3, ctx)  # the central ROI's origin
            arrays = {**arrays, "image": image, "affine": affine}
            if mask is not None:
                arrays["mask"] = mask
        if self.organ_augment > 0 and arrays.get("mask") is not None:
            # its own stream, so intensity_augment draws what it drew without this option
            organ_rng = np.random.default_rng([self.seed, self.epoch, index, 2])
            if organ_rng.random() < self.organ_augment:
                image = augment_organ_contrast(
                    arrays["image"], arrays["mask"], organ_rng, 1, arrays["available"]
                )
                arrays = {**arrays, "image": image}
        if self.intensity_augment > 0:
            aug_rng = np.random.default_rng([self.seed, self.epoch, index, 1])
            if aug_rng.random() < self.intensity_augment:
                arrays = {**arrays, "image": augment_intensity(arrays["image"], aug_rng, arrays["available"])}
        sample: dict[str, Any] = {
            "image": torch.from_numpy(np.ascontiguousarray(arrays["image"], dtype=np.float32)),
            "available": torch.from_numpy(np.asarray(arrays["available"], dtype=bool)),
            "label": self.vocabulary.class_index(case.label) if case.label else -1,
            "case": case.case,
            "subject": case.subject,
            "center": case.center,
            "affine": torch.from_numpy(np.asarray(arrays["affine"], dtype=np.float64)),
        }
        if arrays.get("mask") is not None:
            sample["mask"] = torch.from_numpy(arrays["mask"].astype(np.int64))
        return sample


def _pad_to(t: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    pad: list[int] = []
    for have, want in zip(reversed(t.shape[-3:]), reversed(shape)):
        pad += [0, int(want) - int(have)]
    return torch.nn.functional.pad(t, pad) if any(pad) else t


def collate_cases(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Batch samples with possibly different available sequences.

    Returns:
        ``image`` (B, S, D, H, W) float32, ``available`` (B, S) bool, ``label`` (B,) long, ``affine``
        (B, 4, 4), ``mask`` (B, 1, D, H, W) long only when every sample has one, and lists ``case``,
        ``subject``, ``center``. Volumes of different sizes ("full" mode) are zero-padded at the high end
        of each axis to the largest size (their affines stay valid).
    """
    if not batch:
        raise ValueError("cannot collate an empty batch")
    shape = np.max([b["image"].shape[-3:] for b in batch], axis=0)
    out: dict[str, Any] = {
        "image": torch.stack([_pad_to(b["image"], shape) for b in batch]),
        "available": torch.stack([torch.as_tensor(b["available"], dtype=torch.bool) for b in batch]),
        "label": torch.as_tensor([int(b.get("label", -1)) for b in batch], dtype=torch.long),
        "case": [b["case"] for b in batch],
        "subject": [b.get("subject", b["case"]) for b in batch],
        "center": [b.get("center", "") for b in batch],
    }
    if all("affine" in b for b in batch):
        out["affine"] = torch.stack([torch.as_tensor(b["affine"]) for b in batch])
    if all(b.get("mask") is not None for b in batch):
        out["mask"] = torch.stack([_pad_to(b["mask"], shape) for b in batch]).long()
    return out
