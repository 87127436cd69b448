"""Liver + lesion segmentation fine-tuning (``mrfound finetune --task segment``) with the shared trainer.

Training items are random ROI crops (``MRDataset(mode="random")``, ``samples_per_case`` per case per
epoch; a share ``background_crops``, 0 by default, centred anywhere in the volume, air included, the
rest inside the body) plus one lesion-centred crop per case (so small lesions are seen every epoch);
the loss is MONAI ``DiceCELoss`` on labels {0 background, 1 liver, 2 lesion}, with the manifest's
label 3 (other lesions) counted as lesion (see :mod:`mrfound.models.heads`). Validation segments whole
volumes by MONAI sliding-window inference and reports Dice and HD95 (mm) per class with MONAI metrics.

Outputs in ``RUN``: ``config.json``, ``log.jsonl``, ``tb/``, ``checkpoints/``, ``final/`` (architecture
``segmenter``), ``split.csv``, ``val_segmentation.csv`` (per case) and ``val_metrics.json``.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd
import torch

from mrfound.finetune.common import (
    ConcatWithEpoch,
    FinalEvaluation,
    finetune_param_groups,
    fit_and_save,
    prepare_run,
    set_steps,
)
from mrfound.finetune.config import FinetuneConfig

logger = logging.getLogger(__name__)


def evaluate_segmenter(
    model: Any,
    manifest: Any,
    preprocess: Any,
    *,
    cache_dir: Any = None,
    overlap: float = 0.25,
    sw_batch_size: int = 4,
    device: Any = None,
) -> tuple[dict[str, Any], pd.DataFrame]:
    """Sliding-window segmentation of every case with a mask; Dice / HD95 per class.

    Args:
        model: A :class:`mrfound.models.heads.Segmenter`.
        manifest: Cases (those without a mask are skipped).
        preprocess: The :class:`PreprocessConfig` (spacing gives HD95 in mm).
        cache_dir: Preprocessing cache.
        overlap: Sliding-window overlap.
        sw_batch_size: Windows per forward pass.
        device: Torch device (default: the model's).

    Returns:
        ``(summary, per_case)``: summary ``{liver: {dice, hd95}, lesion: {...}, n_cases}`` (means over
        the cases where the class is present), and a per-case table.
    """
    from tqdm.auto import tqdm

    from mrfound.data.dataset import MRDataset
    from mrfound.finetune.metrics import segmentation_metrics
    from mrfound.models.heads import remap_mask

    ds = MRDataset(manifest, preprocess, mode="full", cache_dir=cache_dir)
    dev = device or next(model.parameters()).device
    rows = []
    for i in tqdm(range(len(ds)), desc="segment", disable=None, leave=False):
        s = ds[i]
        if "mask" not in s:
            continue
        image, avail = s["image"][None].to(dev), s["available"][None].to(dev)
        pred = model.segment(image, avail, overlap=overlap, sw_batch_size=sw_batch_size).cpu()
        m = segmentation_metrics(pred, remap_mask(s["mask"])[None], spacing=preprocess.spacing)
        rows.append(
            {
                "case": s["case"],
                "liver_dice": m["liver"]["dice"],
                "liver_hd95": m["liver"]["hd95"],
                "lesion_dice": m["lesion"]["dice"],
                "lesion_hd95": m["lesion"]["hd95"],
            }
        )
    table = pd.DataFrame(rows, columns=["case", "liver_dice", "liver_hd95", "lesion_dice", "lesion_hd95"])
    summary: dict[str, Any] = {"n_cases": len(table)}
    for cls in ("liver", "lesion"):
        entry = {}
        for metric in ("dice", "hd95"):
            vals = pd.to_numeric(table[f"{cls}_{metric}"], errors="coerce").dropna()
            entry[metric] = float(vals.mean()) if len(vals) else None
            entry[f"{metric}_std"] = float(vals.std(ddof=0)) if len(vals) else None
            entry[f"n_{metric}"] = int(len(vals))
        summary[cls] = entry
    return summary, table


def finetune_segmenter(config: FinetuneConfig) -> dict[str, Any]:
    """Run segmentation fine-tuning end to end (see the module docstring for the outputs).

    Returns:
        Summary: ``final``, ``n_train``, ``n_val``, ``steps``, ``val_metrics`` (or ``None``),
        ``train_result``.
    """
    from mrfound.data.dataset import MRDataset
    from mrfound.models.heads import Segmenter, make_segmentation_head

    def has_mask(case: Any) -> bool:
        return case.mask is not None

    run = prepare_run(config, has_mask, lambda case: "seg", scorable=has_mask)
    src, acc, val_m = run.source, run.accelerator, run.val_manifest
    pre, cache_dir = src.preprocess, run.cache_dir
    common = {
        "cache_dir": cache_dir,
        "seed": config.seed,
        "intensity_augment": config.intensity_augment,
        "organ_augment": config.organ_augment,
        "spatial_augment": config.spatial_augment,
    }
    dataset = ConcatWithEpoch(
        [
            MRDataset(
                run.train_manifest,
                pre,
                mode="random",
                samples_per_case=config.samples_per_case,
                background_fraction=config.background_crops,
                **common,
            ),
            MRDataset(run.train_manifest, pre, mode="lesion", **common),
        ]
    )
    if len(dataset) < config.batch_size * acc.num_processes:
        config.batch_size = max(1, len(dataset) // acc.num_processes)
        logger.warning("few training crops: batch_size lowered to %d", config.batch_size)
    set_steps(config, len(dataset), acc.num_processes)

    encoder = src.encoder
    torch.manual_seed(config.seed)
    head = make_segmentation_head(encoder, feature_size=config.feature_size, skip_source=config.skip_source)
    model = Segmenter(encoder, head, sequence_dropout=config.sequence_dropout)
    groups = finetune_param_groups(model, config)

    def evaluate(m: torch.nn.Module) -> tuple[dict[str, Any], pd.DataFrame]:
        return evaluate_segmenter(
            m, val_m, pre, cache_dir=cache_dir, overlap=config.sw_overlap, sw_batch_size=config.sw_batch_size
        )

    def val_logs(m: torch.nn.Module) -> dict[str, float]:
        metrics, _ = evaluate(m)
        return {
            f"val/{c}_{k}": metrics[c][k]
            for c in ("liver", "lesion")
            for k in ("dice", "hd95")
            if metrics[c][k] is not None
        }

    def final_evaluation(m: torch.nn.Module) -> FinalEvaluation:
        metrics, table = evaluate(m)
        return metrics, {"val_segmentation.csv": table.to_csv(index=False)}, {"spacing_mm": pre.spacing}

    return fit_and_save(
        model,
        dataset,
        config,
        acc,
        task="segment",
        groups=groups,
        source=src,
        split=run.split,
        n_train=len(run.train_cases),
        n_val=len(run.val_cases),
        val_logs=val_logs if val_m is not None else None,
        final_evaluation=final_evaluation if val_m is not None else None,
        extra_provenance={"other_lesions_label_3": "trained as lesion (2)"},
    )


def segmentation_volume(
    model: Any, sample: dict[str, Any], overlap: float | None = None, sw_batch_size: int = 4
) -> np.ndarray:
    """Labels (D, H, W) uint8 {0, 1, 2} of one preprocessed whole volume on its own grid.

    ``sample`` is an ``MRDataset(mode="full")`` item or a ``load_case_arrays`` dict (``image`` (S, D, H, W),
    ``available`` (S,)); inference code then resamples the labels to the case's reference grid. ``overlap``
    None: :func:`mrfound.inference.default_overlap`, the default of ``mrfound predict``.
    """
    image = torch.as_tensor(np.asarray(sample["image"]), dtype=torch.float32)[None]
    avail = torch.as_tensor(np.asarray(sample["available"]), dtype=torch.bool)[None]
    dev = next(model.parameters()).device
    labels = model.segment(image.to(dev), avail.to(dev), overlap=overlap, sw_batch_size=sw_batch_size)
    return labels[0, 0].cpu().numpy().astype(np.uint8)
