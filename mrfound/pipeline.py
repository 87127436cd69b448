"""High-level use from other projects: ``load_pretrained`` and ``extract_features`` (DESIGN §4).

Example:
    >>> import mrfound
    >>> model = mrfound.load_pretrained("runs/tiny/final")              # doctest: +SKIP
    >>> vec = model.embed({"T2WI": "t2.nii.gz", "C+V": ("pv.npy" array, affine)})
    >>> table = mrfound.extract_features("cohort/manifest.csv", model)   # case, subject, ..., f0..fN

A *case* passed to :meth:`MRFoundModel.embed` is one of:

* a dict ``sequence -> path`` (NIfTI file or DICOM folder) or ``sequence -> (array, affine)``, any subset
  of the model's sequences, names or aliases ("T2WI", "C+V", "pv"...). It is preprocessed exactly as in
  training (``mrfound.data.preprocess.load_case_arrays``: one RAS grid at the checkpoint's spacing,
  per-sequence robust normalisation) and cropped around the lesion (``crop_lesion``: the mask's lesion
  label, ``lesion_xyz`` in world mm, or the body centre);
* a dict ``sequence -> numpy array`` with no affine: arrays that are **already preprocessed** (on one
  common grid, normalised like the training data, e.g. ``MRDataset`` samples or the output of
  ``load_case_arrays``). They are used as they are, centre-cropped / zero-padded to the model's ROI;
* a :class:`mrfound.data.manifest.Case` (a manifest row).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from mrfound.data.sequences import Vocabulary
from mrfound.errors import CheckpointError, ConfigError, MrfoundError
from mrfound.models.config import EMBED_ABSENT

__all__ = ["MRFoundModel", "extract_features", "load_pretrained"]


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _fit_to_roi(arr: np.ndarray, roi: tuple[int, int, int]) -> np.ndarray:
    """Centre-crop / zero-pad the last three axes of ``arr`` to ``roi``."""
    out = np.zeros(arr.shape[:-3] + tuple(roi), dtype=np.float32)
    src, dst = [], []
    for have, want in zip(arr.shape[-3:], roi):
        if have >= want:
            lo = (have - want) // 2
            src.append(slice(lo, lo + want))
            dst.append(slice(0, want))
        else:
            lo = (want - have) // 2
            src.append(slice(0, have))
            dst.append(slice(lo, lo + have))
    out[(..., *dst)] = arr[(..., *src)]
    return out


class MRFoundModel:
    """A loaded mrfound model with case-level inference methods.

    Attributes:
        model: The underlying ``nn.Module`` (eval mode), e.g. a ``MaskedModalityAutoencoder``.
        encoder: Its :class:`~mrfound.models.encoder.MultiSequenceViT`.
        config: The checkpoint's ``config.json`` dict.
        vocabulary: Sequence/class vocabulary of the checkpoint.
        preprocessing: ``PreprocessConfig`` of the checkpoint (ROI = the encoder's ``img_size``).
        local_contrast: Sequence -> ``(gain, sigma in mm, level)`` stored by ``mrfound calibrate``
            (:mod:`mrfound.calibration`); :meth:`impute` applies it by default. Empty if uncalibrated.
        device: Where the model runs.
    """

    def __init__(
        self, model: torch.nn.Module, config: Mapping[str, Any], device: torch.device | str | None = None
    ) -> None:
        from mrfound.data.preprocess import PreprocessConfig

        self.device = torch.device(device) if device is not None else _default_device()
        self.model = model.to(self.device).eval()
        self.encoder = model.encoder if hasattr(model, "encoder") else model
        self.config = dict(config)
        enc_cfg = self.encoder.config
        vocab = self.config.get("vocabulary") or {"sequences": list(enc_cfg.sequences)}
        self.vocabulary = Vocabulary.from_dict(vocab)
        if tuple(self.vocabulary.sequences) != tuple(enc_cfg.sequences):
            raise ConfigError("checkpoint vocabulary sequences differ from the encoder's sequences")
        roi = enc_cfg.img_shape
        pp = dict(self.config.get("preprocessing") or {})
        pp.pop("roi_size", None)
        try:
            self.preprocessing = PreprocessConfig.from_saved(pp)
        except (ConfigError, TypeError, ValueError) as exc:
            raise CheckpointError(
                f"config.json 'preprocessing' is not usable by this mrfound: {exc}"
            ) from None
        if len(set(roi)) == 1:
            # the encoder's input size is authoritative for the crop
            self.preprocessing = dataclasses.replace(self.preprocessing, roi_size=roi[0])
        self.roi_shape: tuple[int, int, int] = roi
        from mrfound.calibration import read_calibration

        # per-sequence (gain, sigma mm, level) of `mrfound calibrate`, applied by impute unless overridden
        self.local_contrast: dict[str, tuple[float, float, float]] = read_calibration(self.config)

    def __repr__(self) -> str:
        return (
            f"MRFoundModel({self.config.get('architecture')}, embed_dim={self.embed_dim}, "
            f"sequences={list(self.sequences)}, roi={self.roi_shape}, device={self.device})"
        )

    @property
    def sequences(self) -> tuple[str, ...]:
        """The model's sequence vocabulary, in channel order."""
        return tuple(self.vocabulary.sequences)

    @property
    def embed_dim(self) -> int:
        """Length of the vectors :meth:`embed` returns."""
        return int(self.encoder.config.embed_dim)

    # -------------------------------------------------------------------------------------- inputs
    def prepare(
        self, case: Any, *, lesion_xyz: tuple[float, float, float] | None = None, mask: Any = None
    ) -> dict[str, np.ndarray]:
        """Turn a case (see the module docstring) into the model input.

        Args:
            case: Dict ``sequence -> path | (array, affine) | preprocessed array`` or a manifest ``Case``.
            lesion_xyz: Lesion centre in world mm (RAS) to crop around (paths/affine inputs only).
            mask: Optional label map (path or ``(array, affine)``); label 2 marks the target lesion.

        Returns:
            ``image`` float32 (S, D, H, W) (zeros where missing) and ``available`` bool (S,).
        """
        from mrfound.data.preprocess import crop_lesion, load_case_arrays, preprocess_case

        roi = self.roi_shape
        if hasattr(case, "sequences") and hasattr(case, "case"):
            sample = preprocess_case(case, self.preprocessing, self.vocabulary)
            return self._crop(sample, crop_lesion)
        if not isinstance(case, Mapping) or not case:
            raise MrfoundError(
                "a case must be a non-empty dict of sequence -> path, (array, affine) or preprocessed array"
            )
        entries = {k: v for k, v in case.items() if v is not None and not (isinstance(v, str) and not v)}
        plain = {k: isinstance(v, (np.ndarray, torch.Tensor)) for k, v in entries.items()}
        if entries and all(plain.values()):
            image = np.zeros((len(self.sequences), *roi), dtype=np.float32)
            available = np.zeros(len(self.sequences), dtype=bool)
            shape = None
            for name, value in entries.items():
                idx = self._sequence_index(name)
                arr = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
                if arr.ndim != 3:
                    raise MrfoundError(f"sequence {name!r}: expected a 3D array, got shape {arr.shape}")
                if shape is not None and arr.shape != shape:
                    raise MrfoundError(
                        f"sequence {name!r}: shape {arr.shape} differs from {shape}; "
                        "preprocessed arrays must "
                        "share one grid (pass (array, affine) pairs to resample them)"
                    )
                shape = arr.shape
                image[idx] = _fit_to_roi(arr.astype(np.float32, copy=False), roi)
                available[idx] = True
            return {"image": image, "available": available}
        if any(plain.values()):
            raise MrfoundError(
                "a case mixes plain arrays (taken as already preprocessed) with paths or (array, affine) "
                "pairs; give every sequence in the same form"
            )
        for name in entries:
            self._sequence_index(name)
        sample = load_case_arrays(
            entries, self.preprocessing, self.vocabulary, mask=mask, lesion_xyz=lesion_xyz
        )
        return self._crop(sample, crop_lesion)

    def _sequence_index(self, name: str) -> int:
        canon = self.vocabulary.canonical_sequence(name)
        if canon is None:
            raise ConfigError(f"unknown sequence {name!r}; this model knows {', '.join(self.sequences)}")
        return self.sequences.index(canon)

    def _crop(self, sample: Mapping[str, Any], crop_lesion: Any) -> dict[str, np.ndarray]:
        roi = self.roi_shape
        if len(set(roi)) != 1:
            raise MrfoundError(f"the model's ROI {roi} is not a cube; pass preprocessed arrays instead")
        cropped = crop_lesion(sample, roi[0])
        return {
            "image": np.asarray(cropped["image"], dtype=np.float32),
            "available": np.asarray(cropped["available"], dtype=bool),
        }

    # -------------------------------------------------------------------------------------- features
    @torch.no_grad()
    def embed_arrays(
        self,
        image: np.ndarray | torch.Tensor,
        available: np.ndarray | torch.Tensor,
        pooling: str = "mean",
        absent: str = "drop",
    ) -> np.ndarray:
        """Embeddings of model-ready inputs.

        Args:
            image: (S, D, H, W) or (B, S, D, H, W) preprocessed ROI(s).
            available: (S,) or (B, S) bool.
            pooling: ``"mean"`` of the encoder's final tokens over all available sequences, ``"centre"``:
                of those in the central half of the ROI, or ``"centre_per_sequence"``: that central mean
                of each sequence, concatenated (NaN blocks for absent sequences; see
                ``MultiSequenceViT.embed``).
            absent: ``"drop"``: absent sequences contribute no tokens; ``"impute"``: the model's decoder
                synthesises them from the available ones first, so the encoder sees every sequence
                (a pretrained masked-modality autoencoder checkpoint only).

        Returns:
            float32 array (C,) or (B, C); (S * C,) or (B, S * C) for ``"centre_per_sequence"``.
        """
        complete = self._completer(absent)
        img = torch.as_tensor(image, dtype=torch.float32)
        av = torch.as_tensor(available, dtype=torch.bool)
        single = img.ndim == 4
        if single:
            img, av = img.unsqueeze(0), av.unsqueeze(0)
        img, av = img.to(self.device), av.to(self.device)
        if complete is not None:
            img, av = complete(img, av)
        feats = self.encoder.embed(img, av, pooling=pooling)
        out = feats.float().cpu().numpy()
        return out[0] if single else out

    def _completer(self, absent: str) -> Any:
        """``model.complete`` for ``absent="impute"``, ``None`` for ``"drop"``; ConfigError otherwise."""
        if absent not in EMBED_ABSENT:
            raise ConfigError(f"absent must be one of {', '.join(EMBED_ABSENT)}, got {absent!r}")
        if absent == "drop":
            return None
        if not hasattr(self.model, "complete"):
            raise ConfigError(
                f"absent='impute' needs a pretrained masked-modality autoencoder checkpoint; this one is "
                f"{self.config.get('architecture')!r}"
            )
        return self.model.complete

    def embed(
        self,
        case: Any,
        *,
        lesion_xyz: tuple[float, float, float] | None = None,
        mask: Any = None,
        pooling: str = "mean",
        absent: str = "drop",
    ) -> np.ndarray:
        """Feature vector (``embed_dim``,) of one case (any subset of sequences; see the module docstring).

        ``pooling="centre"`` pools only the tokens of the central half of the lesion ROI;
        ``"centre_per_sequence"`` pools them per sequence; ``absent="impute"`` synthesises the case's
        missing sequences before encoding (see :meth:`embed_arrays`).

        Example:
            >>> model.embed({"t2": "case1/t2.nii.gz", "pv": "case1/pv.nii.gz"})  # doctest: +SKIP
        """
        self._completer(absent)  # a bad option fails before any file is read
        x = self.prepare(case, lesion_xyz=lesion_xyz, mask=mask)
        return self.embed_arrays(x["image"], x["available"], pooling=pooling, absent=absent)

    # ------------------------------------------------------------------------------ heads (inference.py)
    def predict(self, case_or_manifest: Any, **kwargs: Any) -> Any:
        """Class probabilities or segmentation of a case, or a table for a manifest.

        See :func:`mrfound.inference.predict` (needs a fine-tuned classification/segmentation checkpoint).
        """
        from mrfound.inference import predict

        return predict(self, case_or_manifest, **kwargs)

    def segment(self, case: Any, **kwargs: Any) -> Any:
        """Liver/lesion labels on the case's reference grid (``nibabel.Nifti1Image``).

        See :func:`mrfound.inference.segment`.
        """
        from mrfound.inference import segment

        return segment(self, case, **kwargs)

    def impute(self, case: Any, sequence: str, **kwargs: Any) -> Any:
        """Synthesise ``sequence`` from the case's other sequences (``nibabel.Nifti1Image``).

        See :func:`mrfound.inference.impute` (needs a pretrained masked-modality autoencoder checkpoint).
        """
        from mrfound.inference import impute

        return impute(self, case, sequence, **kwargs)


def load_pretrained(
    name_or_path: str | os.PathLike,
    *,
    device: torch.device | str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
) -> MRFoundModel:
    """Load a checkpoint folder, a name in ``$MRFOUND_HOME/models`` or ``hf://owner/repo[@revision]``.

    The architecture is rebuilt from ``config.json`` and the safetensors weights are loaded strictly
    (pickles are refused); the model is put in eval mode.

    Args:
        name_or_path: See :func:`mrfound.models.checkpoint.resolve_checkpoint`.
        device: Default CUDA when available, else CPU.
        cache_dir: Hugging Face cache for ``hf://`` ids (default the hub's).
        local_files_only: Do not contact the Hub for ``hf://`` ids.

    Returns:
        :class:`MRFoundModel`.

    Raises:
        CheckpointError: Unknown name, unsafe or mismatching files, incompatible version.
    """
    import warnings

    from mrfound.calibration import calibration_matches_weights
    from mrfound.models.checkpoint import load_model, resolve_checkpoint

    dev = torch.device(device) if device is not None else _default_device()
    folder = resolve_checkpoint(name_or_path, cache_dir=cache_dir, local_files_only=local_files_only)
    model, config = load_model(folder, device=dev)
    loaded = MRFoundModel(model, config, device=dev)
    if loaded.local_contrast and not calibration_matches_weights(config, folder):
        # a calibration is only valid for the weights it was chosen for (model.safetensors replaced?)
        warnings.warn(
            f"{folder}: the imputation calibration in config.json was chosen for other weights (SHA-256 "
            "differs); it is ignored, rerun mrfound calibrate",
            stacklevel=2,
        )
        loaded.local_contrast = {}
    return loaded


def extract_features(
    manifest: Any,
    model: MRFoundModel | str | os.PathLike,
    *,
    batch_size: int = 8,
    cache_dir: str | os.PathLike | None = None,
    num_workers: int = 0,
    pooling: str = "mean",
    absent: str = "drop",
):
    """Embed every case of a manifest (lesion-centred ROI), one row per case.

    Args:
        manifest: A :class:`~mrfound.data.manifest.Manifest` or a CSV path.
        model: An :class:`MRFoundModel` or anything :func:`load_pretrained` accepts.
        batch_size: Cases per forward pass.
        cache_dir: Preprocessing cache folder (reused across runs); ``None`` = no cache.
        num_workers: DataLoader workers for preprocessing.
        pooling: Token pooling, ``"mean"``, ``"centre"`` or ``"centre_per_sequence"`` (see
            :meth:`MRFoundModel.embed_arrays`).
        absent: ``"drop"`` or ``"impute"`` (the case's missing sequences synthesised first; see
            :meth:`MRFoundModel.embed_arrays`).

    Returns:
        ``pandas.DataFrame`` with columns ``case``, ``subject``, ``center``, ``label`` (class name or
        None) and ``f0 .. f{C-1}`` (float32), in manifest order.
    """
    import pandas as pd
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    from mrfound.data.dataset import MRDataset, collate_cases
    from mrfound.data.manifest import as_manifest

    if not isinstance(model, MRFoundModel):
        model = load_pretrained(model)
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    model._completer(absent)  # a bad option fails before any case is read
    man = as_manifest(manifest, model.vocabulary)
    if tuple(man.vocabulary.sequences) != model.sequences:
        raise ConfigError(
            f"the manifest's sequences {list(man.vocabulary.sequences)} differ from the model's "
            f"{list(model.sequences)}; read the manifest with the model's vocabulary"
        )
    dataset = MRDataset(man, config=model.preprocessing, mode="lesion", cache_dir=cache_dir)
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=collate_cases
    )
    feats: list[np.ndarray] = []
    for batch in tqdm(loader, total=len(loader), desc="features", unit="batch", disable=None):
        feats.append(model.embed_arrays(batch["image"], batch["available"], pooling=pooling, absent=absent))
    width = model.encoder.embed_dim_of(pooling)
    matrix = np.concatenate(feats, axis=0) if feats else np.zeros((0, width), dtype=np.float32)
    meta = pd.DataFrame(
        {
            "case": [c.case for c in man.cases],
            "subject": [c.subject for c in man.cases],
            "center": [c.center for c in man.cases],
            "label": [c.label for c in man.cases],
        }
    )
    features = pd.DataFrame(matrix, columns=[f"f{i}" for i in range(matrix.shape[1])])
    return pd.concat([meta, features], axis=1)
