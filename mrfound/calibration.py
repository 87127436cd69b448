"""Calibrate imputation's local contrast per sequence and keep it in the checkpoint (``mrfound calibrate``).

A synthesis draws vessels, lesion edges and texture where the *source* sequences show them, but a hidden
sequence was acquired in another breath-hold, with its own noise and (a contrast phase) its own bolus
timing, so the prediction with the least squared error has less local contrast than the decoder gives
(:func:`mrfound.inference.shrink_local_contrast`). On the 240-case phantom, keeping 40-90 % of it
around an 8-64 mm local mean, chosen on training cases, lifted every sequence above both simple
baselines of issue 5, arterial phase included (README, Imputation). A *level* (scale of that local mean)
corrects a brightness the decoder gets wrong alike on every case, as an under-trained one does for the
pre-contrast liver.

:func:`calibrate_local_contrast` chooses, for each sequence, the gain, width and level with the best mean PSNR
over cases of a manifest that have it: each sequence is hidden in turn and synthesised from the case's
others, exactly as :func:`mrfound.inference.impute` does, and scored in the liver (the manifest's mask,
label > 0) or, label-free, in the body, in either case inside the hidden sequence's own field of view.
:func:`store_calibration` writes the result into the checkpoint's ``config.json`` under
``local_contrast`` (weights untouched, atomic), so it travels with the two files a checkpoint is made of
(``hf://`` fetches only those) and ``impute`` applies it by default.
"""

from __future__ import annotations

import datetime as _dt
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mrfound.errors import CheckpointError, ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from mrfound.data.manifest import Case, Manifest
    from mrfound.pipeline import MRFoundModel

__all__ = [
    "CONFIG_KEY",
    "LOCAL_CONTRAST_WIDTHS_MM",
    "REGIONS",
    "calibrate_local_contrast",
    "calibration_matches_weights",
    "check_store_target",
    "evaluate_local_contrast",
    "fov_mask",
    "read_calibration",
    "store_calibration",
]

CONFIG_KEY = "local_contrast"
"""Key of the calibration in a checkpoint's ``config.json``."""

LOCAL_CONTRAST_WIDTHS_MM = (8.0, 12.0, 20.0, 32.0, 48.0, 64.0)
"""Widths (mm) of the Gaussian local mean tried; 48 and 64 since three sequences chose 32, then the edge."""

REGIONS = ("liver", "body")
"""Where the error is scored: ``liver`` (mask label > 0; needs masks), ``body`` (preprocessing's body)."""

MIN_REGION_VOXELS = 10
"""A case whose region holds fewer voxels in the hidden sequence's field of view is not scored."""


def fov_mask(source: Any, grid_affine: np.ndarray, grid_shape: Sequence[int]) -> np.ndarray:
    """Voxels of a grid inside a sequence's own field of view.

    Args:
        source: The sequence's file (path) or ``(array, affine)``.
        grid_affine: (4, 4) affine of the grid.
        grid_shape: Its shape.

    Returns:
        bool array of ``grid_shape``.
    """
    from mrfound.data.readers import read_header
    from mrfound.inference import resample_to_grid

    if isinstance(source, tuple):
        shape, affine = np.asarray(source[0]).shape[:3], np.asarray(source[1], dtype=np.float64)
    else:
        h = read_header(source)
        shape, affine = h.shape, h.affine
    ones = np.ones(shape, dtype=np.float32)
    return resample_to_grid(ones, affine, grid_affine, tuple(grid_shape), nearest=True) > 0.5


def _cases(model: MRFoundModel, manifest: Any) -> list[Case]:
    if isinstance(manifest, (list, tuple)):
        return list(manifest)
    from mrfound.inference import _as_manifest

    return list(_as_manifest(model, manifest).cases)


def _check_options(
    model: MRFoundModel,
    sequences: Sequence[str] | None,
    region: str,
    max_cases: int,
) -> list[str]:
    if region not in REGIONS:
        raise ConfigError(f"region must be one of {', '.join(REGIONS)}, got {region!r}")
    if max_cases < 1:
        raise ConfigError(f"max_cases must be >= 1, got {max_cases}")
    if sequences is None:
        return list(model.sequences)
    out = []
    for s in sequences:
        canon = model.vocabulary.canonical_sequence(str(s))
        if canon is None:
            raise ConfigError(f"unknown sequence {s!r}; this model knows {', '.join(model.sequences)}")
        out.append(canon)
    return out


def _pick(cases: Sequence[Case], wanted: Sequence[str], region: str, max_cases: int) -> list[Case]:
    """``max_cases`` of the cases that can score (a wanted sequence and another one; a mask for the liver),
    spread evenly over the list."""
    usable = [
        c
        for c in cases
        if len(c.sequences) >= 2
        and any(name in c.sequences for name in wanted)
        and (region != "liver" or c.mask is not None)
    ]
    if not usable:
        need = " and a mask (or use region 'body')" if region == "liver" else ""
        raise ConfigError(
            f"none of the {len(cases)} cases has {' or '.join(wanted)} with another sequence{need}"
        )
    return usable[:: max(1, len(usable) // max_cases)][:max_cases]


def _scored_syntheses(
    model: MRFoundModel,
    picked: Sequence[Case],
    wanted: Sequence[str],
    region: str,
    overlap: float | None,
    sw_batch_size: int,
    progress: bool | None,
    desc: str,
) -> Iterator[tuple[Case, str, np.ndarray, np.ndarray, np.ndarray]]:
    """Hide each wanted sequence of ``picked`` (:func:`_pick`) in turn and synthesise it from the case's
    others, as :func:`mrfound.inference.impute` does; yields ``(case, sequence, synthesis as decoded,
    truth, region)`` on the preprocessing grid (region: liver or body inside the hidden sequence's field
    of view)."""
    from tqdm.auto import tqdm

    from mrfound.data.preprocess import preprocess_case
    from mrfound.inference import synthesise_volume

    clip = tuple(model.preprocessing.clip)
    names = list(model.sequences)
    disable = None if progress is None else not progress
    for case in tqdm(picked, desc=desc, unit="case", disable=disable):
        s = preprocess_case(case, model.preprocessing, model.vocabulary)
        base = s["mask"][0] > 0 if region == "liver" else np.asarray(s["body"], dtype=bool)
        av = np.asarray(s["available"], dtype=bool)
        if av.sum() < 2:  # nothing left to synthesise from
            continue
        for t in np.flatnonzero(av):
            name = names[t]
            if name not in wanted:
                continue
            reg = base & fov_mask(case.sequences[name], s["affine"], base.shape)
            if reg.sum() < MIN_REGION_VOXELS:
                continue
            syn = synthesise_volume(
                model.model,
                s["image"],
                av,
                int(t),
                overlap=overlap,
                sw_batch_size=sw_batch_size,
                device=model.device,
                clip=clip,
            )
            yield case, name, syn, np.asarray(s["image"][t]), reg


def calibrate_local_contrast(
    model: MRFoundModel,
    manifest: Manifest | str | os.PathLike | Sequence[Case],
    *,
    sequences: Sequence[str] | None = None,
    region: str = "liver",
    max_cases: int = 48,
    widths_mm: Sequence[float] = LOCAL_CONTRAST_WIDTHS_MM,
    gains: Sequence[float] | None = None,
    levels: Sequence[float] | None = None,
    overlap: float | None = None,
    sw_batch_size: int = 4,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Choose each sequence's local-contrast gain and width on cases where the sequence is known.

    Args:
        model: A pretrained masked-modality autoencoder (:func:`mrfound.load_pretrained`).
        manifest: Manifest, CSV path or list of cases; ``max_cases`` of those that can be scored (a
            requested sequence and another one; a mask for ``liver``), spread evenly over the list, are
            read. Use cases the checkpoint will not be evaluated on (e.g. its training cases).
        sequences: Sequences to calibrate (names or aliases; default all the model knows).
        region: ``liver`` or ``body`` (see :data:`REGIONS`).
        max_cases: Cases to read.
        widths_mm: Widths of the local mean to try.
        gains: Gains to try (default :data:`mrfound.inference.LOCAL_CONTRAST_GAINS`; 1 = as decoded).
        levels: Scales of the local mean to try (default :data:`mrfound.inference.LOCAL_CONTRAST_LEVELS`;
            ``[1.0]`` calibrates the contrast only).
        overlap: Sliding-window overlap of the synthesis (default as :func:`mrfound.inference.impute`).
        sw_batch_size: Windows per forward pass.
        progress: Progress bar (default: only on a terminal).

    Returns:
        ``sequences``: name -> ``gain``, ``sigma_mm``, ``level``, ``psnr`` (mean liver/body PSNR at that
        setting, data range 1 in normalised units), ``psnr_as_decoded``, ``n_cases``, for each sequence
        with at least one scorable case; ``region``, ``widths_mm``, ``gains``, ``levels``, ``cases_read``,
        ``uncalibrated``
        (requested sequences no case could score).

    Raises:
        ConfigError: Bad options; no case that can be scored.
        ManifestError: A case that cannot be read (naming the case and column).
    """
    from mrfound.inference import (
        LOCAL_CONTRAST_GAINS,
        LOCAL_CONTRAST_LEVELS,
        _require,
        choose_local_contrast,
        local_contrast_mse,
    )

    _require(model, ("autoencoder",), "impute")
    wanted = _check_options(model, sequences, region, max_cases)
    if not widths_mm or any(not float(w) > 0 for w in widths_mm):
        raise ConfigError(f"widths must be > 0 mm, got {list(widths_mm)}")
    gains = tuple(float(g) for g in (LOCAL_CONTRAST_GAINS if gains is None else gains))
    if not gains or any(not 0.0 <= g <= 1.0 for g in gains):
        raise ConfigError(f"gains must be in [0, 1], got {list(gains)}")
    levels = tuple(float(v) for v in (LOCAL_CONTRAST_LEVELS if levels is None else levels))
    if not levels or any(not 0.0 < v <= 4.0 for v in levels):
        raise ConfigError(f"levels must be in (0, 4], got {list(levels)}")
    spacing = float(model.preprocessing.spacing)
    sigmas = [float(w) / spacing for w in widths_mm]
    picked = _pick(_cases(model, manifest), wanted, region, max_cases)
    mse: dict[str, list[np.ndarray]] = {}
    for _case, name, syn, truth, reg in _scored_syntheses(
        model, picked, wanted, region, overlap, sw_batch_size, progress, "calibrate"
    ):
        mse.setdefault(name, []).append(local_contrast_mse(syn, truth, reg, sigmas, gains, levels))
    chosen = {}
    for name in wanted:
        if name in mse:
            best = choose_local_contrast(mse[name], sigmas, gains, levels)
            chosen[name] = {
                "gain": best["gain"],
                "sigma_mm": round(best["sigma"] * spacing, 6),
                "level": best["level"],
                "psnr": round(best["psnr"], 4),
                "psnr_as_decoded": round(best["psnr_as_decoded"], 4),
                "n_cases": len(mse[name]),
            }
    return {
        "sequences": chosen,
        "region": region,
        "widths_mm": [float(w) for w in widths_mm],
        "gains": list(gains),
        "levels": list(levels),
        "cases_read": len(picked),
        "uncalibrated": [n for n in wanted if n not in chosen],
    }


def evaluate_local_contrast(
    model: MRFoundModel,
    manifest: Manifest | str | os.PathLike | Sequence[Case],
    *,
    sequences: Sequence[str] | None = None,
    local_contrast: Sequence[float] | str | None = "auto",
    region: str = "liver",
    max_cases: int = 48,
    overlap: float | None = None,
    sw_batch_size: int = 4,
    progress: bool | None = None,
    keep_volumes: bool = False,
) -> dict[str, Any]:
    """Liver (or body) PSNR of each sequence's synthesis with the local contrast applied and as decoded, on
    cases with truth: does a calibration chosen on some cases carry over to others?

    Args:
        model: A pretrained masked-modality autoencoder (:func:`mrfound.load_pretrained`).
        manifest: Manifest, CSV path or list of cases, e.g. held-out cases the calibration never saw;
            ``max_cases`` of those that can be scored are read, as in :func:`calibrate_local_contrast`.
        sequences: Sequences to evaluate (default all the model knows).
        local_contrast: ``"auto"`` (the checkpoint's calibration of each sequence; as decoded where it has
            none), ``"none"``, or one ``(gain, sigma mm[, level])`` for every sequence.
        region: ``liver`` or ``body``.
        max_cases: Cases to read.
        overlap: Sliding-window overlap of the synthesis.
        sw_batch_size: Windows per forward pass.
        progress: Progress bar (default: only on a terminal).
        keep_volumes: Also return each case's ``truth``, ``as_decoded``, ``applied`` and ``region`` volumes
            (preprocessing grid) in its row, e.g. for a figure.

    Returns:
        ``sequences``: name -> ``psnr`` and ``psnr_as_decoded`` (means over cases, data range 1),
        ``local_contrast`` (``[gain, sigma_mm, level]`` applied, or None), ``n_cases`` and ``cases`` (one
        row per case: ``case``, ``psnr``, ``psnr_as_decoded``); ``region``, ``cases_read``,
        ``unscored`` (requested sequences no case could score).

    Raises:
        ConfigError: Bad options; no case that can be scored.
        ManifestError: A case that cannot be read (naming the case and column).
    """
    from mrfound.inference import _local_contrast_for, _require, apply_local_contrast, masked_psnr

    _require(model, ("autoencoder",), "impute")
    wanted = _check_options(model, sequences, region, max_cases)
    # every sequence's setting checked before any case is read
    applied = {name: _local_contrast_for(model, name, local_contrast) for name in wanted}
    picked = _pick(_cases(model, manifest), wanted, region, max_cases)
    clip = tuple(model.preprocessing.clip)
    rows: dict[str, list[dict[str, Any]]] = {}
    for case, name, syn, truth, reg in _scored_syntheses(
        model, picked, wanted, region, overlap, sw_batch_size, progress, "evaluate"
    ):
        out = apply_local_contrast(syn, applied[name][1], clip)
        # rounded as the calibration's PSNRs
        psnr, as_decoded = round(masked_psnr(out, truth, reg), 4), round(masked_psnr(syn, truth, reg), 4)
        row = {"case": case.case, "psnr": psnr, "psnr_as_decoded": as_decoded}
        if keep_volumes:
            row.update(truth=truth, as_decoded=syn, applied=out, region=reg)
        rows.setdefault(name, []).append(row)
    result = {}
    for name in wanted:
        if name in rows:
            mm = applied[name][0]
            result[name] = {
                "psnr": round(float(np.mean([r["psnr"] for r in rows[name]])), 4),
                "psnr_as_decoded": round(float(np.mean([r["psnr_as_decoded"] for r in rows[name]])), 4),
                "local_contrast": None if mm is None else [float(v) for v in mm],
                "n_cases": len(rows[name]),
                "cases": rows[name],
            }
    return {
        "sequences": result,
        "region": region,
        "cases_read": len(picked),
        "unscored": [n for n in wanted if n not in result],
    }


def read_calibration(
    config: Mapping[str, Any], source: str = "config.json"
) -> dict[str, tuple[float, float, float]]:
    """The ``(gain, sigma in mm, level)`` per sequence stored in a checkpoint config ({} when there is none;
    a calibration without ``level`` has level 1).

    Raises:
        CheckpointError: A malformed ``local_contrast`` entry.
    """
    from mrfound.inference import _check_local_contrast

    entry = config.get(CONFIG_KEY)
    if entry is None:
        return {}
    seqs = entry.get("sequences") if isinstance(entry, Mapping) else None
    if not isinstance(seqs, Mapping):
        raise CheckpointError(f"{source}: '{CONFIG_KEY}' must be an object with a 'sequences' object")
    out = {}
    for name, v in seqs.items():
        try:
            gain, sigma, level = float(v["gain"]), float(v["sigma_mm"]), float(v.get("level", 1.0))
            _check_local_contrast(gain, sigma, "mm", level)
        except (AttributeError, KeyError, TypeError, ValueError, ConfigError) as exc:
            raise CheckpointError(f"{source}: '{CONFIG_KEY}' of {name!r} is not usable ({exc})") from None
        out[str(name)] = (gain, sigma, level)
    return out


def calibration_matches_weights(config: Mapping[str, Any], folder: str | os.PathLike) -> bool:
    """Whether a stored calibration was chosen for the weights now in ``folder`` (True when the config has
    none, or one without a recorded weights hash)."""
    from mrfound.models.checkpoint import WEIGHTS_NAME
    from mrfound.utils.io import file_sha256

    entry = config.get(CONFIG_KEY)
    prov = entry.get("provenance") if isinstance(entry, Mapping) else None
    want = prov.get("weights_sha256") if isinstance(prov, Mapping) else None
    if not want:
        return True
    return file_sha256(Path(folder) / WEIGHTS_NAME) == want


def check_store_target(checkpoint: str | os.PathLike, out: str | os.PathLike | None) -> None:
    """Fail early (before any case is read) where :func:`store_calibration` could not write.

    Raises:
        ConfigError: An ``hf://`` checkpoint without ``out`` (the Hub cache is not ours to change).
        CheckpointError: ``out`` exists and is not an empty folder.
    """
    if out is None and str(checkpoint).startswith("hf://"):
        raise ConfigError(f"{checkpoint} is a downloaded checkpoint: give an output folder for the copy")
    if out is not None:
        out = Path(out)
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise CheckpointError(f"{out} exists and is not an empty folder; choose a new one for the copy")


def store_calibration(
    checkpoint: str | os.PathLike,
    calibration: Mapping[str, Any],
    *,
    out: str | os.PathLike | None = None,
    provenance: Mapping[str, Any] | None = None,
) -> Path:
    """Write a calibration into a checkpoint's ``config.json`` (``local_contrast``), atomically.

    Args:
        checkpoint: A local checkpoint folder (or registry name); an ``hf://`` id needs ``out``.
        calibration: What :func:`calibrate_local_contrast` returned.
        out: Write a calibrated copy here instead (a new folder: config + the same weights); the
            original is left as it was.
        provenance: Extra fields recorded with it under ``provenance`` (e.g. the manifest and the command),
            beside the weights' SHA-256, the time and the mrfound version.

    Returns:
        The folder written.

    Raises:
        CheckpointError: Unreadable checkpoint, or ``out`` exists and is not empty.
        ConfigError: An ``hf://`` checkpoint without ``out``.
    """
    from mrfound import __version__
    from mrfound.models.checkpoint import CONFIG_NAME, WEIGHTS_NAME, read_config, resolve_checkpoint
    from mrfound.utils.io import atomic_dir, atomic_write_json, file_sha256

    check_store_target(checkpoint, out)
    folder = resolve_checkpoint(checkpoint)
    cfg = read_config(folder)
    weights = folder / WEIGHTS_NAME
    entry = dict(calibration)
    entry["provenance"] = {
        "weights_sha256": file_sha256(weights),  # the weights it was chosen for
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "mrfound_version": __version__,
        **dict(provenance or {}),
    }
    cfg[CONFIG_KEY] = entry
    read_calibration(cfg)  # never write what load_pretrained would refuse
    if out is None:
        atomic_write_json(folder / CONFIG_NAME, cfg)
        return folder
    with atomic_dir(out) as tmp:
        shutil.copyfile(weights, tmp / WEIGHTS_NAME)
        atomic_write_json(tmp / CONFIG_NAME, cfg)
    return Path(out)
