"""Lesion-classification fine-tuning (``mrfound finetune --task classify``) with the shared trainer.

Recipe (MAE/BEiT fine-tuning): pretrained encoder + :class:`~mrfound.models.heads.ClassificationHead`,
AdamW with layer-wise LR decay (``layer_decay`` per block towards the input), warm-up + cosine,
class-balanced cross-entropy (or class-balanced resampling), optional sequence dropout (each available
sequence removed with probability p during training, at least one kept) for robustness to missing
sequences. ``--from-scratch`` trains the same architecture from random weights (the supervised
baseline); ``--labels-fraction`` keeps a stratified, nested, seeded share of the labelled training
cases (label-efficiency curves).

Outputs in ``RUN``: ``config.json`` (resolved config), ``log.jsonl``, ``tb/``, ``checkpoints/``,
``final/`` (a checkpoint of architecture ``classifier`` that ``load_pretrained`` and
:func:`mrfound.models.checkpoint.load_model` read), ``split.csv`` (role of every case),
``val_predictions.csv`` and ``val_metrics.json`` when there is a validation set.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from mrfound.finetune.common import (
    BalancedDataset,
    FinalEvaluation,
    class_weights,
    finetune_param_groups,
    fit_and_save,
    prepare_run,
    set_steps,
)
from mrfound.finetune.config import FinetuneConfig

logger = logging.getLogger(__name__)


def predict_classifier(
    model: Any,
    manifest: Any,
    preprocess: Any,
    *,
    cache_dir: Any = None,
    batch_size: int = 8,
    device: Any = None,
    protocol_sequences: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Class probabilities of every case of ``manifest`` from its lesion-centred ROI.

    Args:
        model: A :class:`mrfound.models.heads.Classifier`.
        manifest: Cases to predict.
        preprocess: Its :class:`PreprocessConfig` (from the checkpoint).
        cache_dir: Preprocessing cache.
        batch_size: Cases per forward.
        device: Torch device (default: the model's).
        protocol_sequences: If given, only these sequences are used (missing-sequence protocol);
            cases left with none get no row.

    Returns:
        DataFrame ``case``, ``label_pred``, ``p_<class>`` for each class, ``sequences_used``.
    """
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    from mrfound.data.dataset import MRDataset, collate_cases

    seqs = list(model.encoder.config.sequences)
    keep = torch.tensor([protocol_sequences is None or s in set(protocol_sequences) for s in seqs])
    ds = MRDataset(manifest, preprocess, mode="lesion", cache_dir=cache_dir)
    dl = DataLoader(ds, batch_size=batch_size, shuffle=False, collate_fn=collate_cases)
    dev = device or next(model.parameters()).device
    rows = []
    for batch in tqdm(dl, desc="predict", disable=None, leave=False):
        avail = batch["available"] & keep
        use = avail.any(dim=1)
        if not bool(use.any()):
            continue
        proba = model.predict_proba(batch["image"][use].to(dev), avail[use].to(dev)).cpu().numpy()
        names = [c for c, u in zip(batch["case"], use.tolist()) if u]
        for name, p, a in zip(names, proba, avail[use].tolist()):
            row = {"case": name, "label_pred": model.classes[int(np.argmax(p))]}
            row.update({f"p_{c}": float(v) for c, v in zip(model.classes, p)})
            row["sequences_used"] = "+".join(s for s, ok in zip(seqs, a) if ok)
            rows.append(row)
    cols = ["case", "label_pred", *[f"p_{c}" for c in model.classes], "sequences_used"]
    return pd.DataFrame(rows, columns=cols)


def evaluate_classifier(
    model: Any,
    manifest: Any,
    preprocess: Any,
    *,
    cache_dir: Any = None,
    batch_size: int = 8,
    n_boot: int = 200,
    seed: int = 0,
) -> tuple[dict[str, Any], pd.DataFrame]:
    """Predictions and :func:`classification_metrics` on the labelled cases of ``manifest``."""
    from mrfound.finetune.metrics import classification_metrics

    pred = predict_classifier(model, manifest, preprocess, cache_dir=cache_dir, batch_size=batch_size)
    truth = {c.case: c.label for c in manifest.cases}
    pred.insert(1, "label", [truth.get(c) or "" for c in pred["case"]])
    lab = pred[pred["label"] != ""]
    if lab.empty:
        return {"n_cases": 0}, pred
    proba = lab[[f"p_{c}" for c in model.classes]].to_numpy(float)
    metrics = classification_metrics(
        lab["label"].tolist(), proba, model.classes, manifest.vocabulary.malignant, n_boot=n_boot, seed=seed
    )
    return metrics, pred


def finetune_classifier(config: FinetuneConfig) -> dict[str, Any]:
    """Run classification fine-tuning end to end (see the module docstring for the outputs).

    Returns:
        Summary: ``final`` (checkpoint folder), ``n_train``, ``n_val``, ``steps``, ``val_metrics``
        (or ``None``), ``train_result`` (last logs).
    """
    from mrfound.data.dataset import MRDataset
    from mrfound.models.heads import Classifier, make_classification_head

    run = prepare_run(config, lambda c: c.label is not None, lambda c: c.label)
    src, acc, train_cases, val_m = run.source, run.accelerator, run.train_cases, run.val_manifest
    vocab, pre, cache_dir = src.vocabulary, src.preprocess, run.cache_dir
    y = [vocab.class_index(c.label) for c in train_cases]

    if len(train_cases) < config.batch_size * acc.num_processes:
        logger.warning(
            "only %d training cases: batch_size lowered from %d to %d",
            len(train_cases),
            config.batch_size,
            max(1, len(train_cases) // acc.num_processes),
        )
        config.batch_size = max(1, len(train_cases) // acc.num_processes)
    dataset: Any = MRDataset(
        run.train_manifest,
        pre,
        mode="lesion",
        cache_dir=cache_dir,
        seed=config.seed,
        intensity_augment=config.intensity_augment,
        spatial_augment=config.spatial_augment,
    )
    if config.balance == "sampler":
        dataset = BalancedDataset(dataset, y, seed=config.seed)
    set_steps(config, len(dataset), acc.num_processes)

    encoder = src.encoder
    torch.manual_seed(config.seed)
    head = make_classification_head(
        encoder,
        len(vocab.classes),
        pooling=config.pooling,
        dropout=config.head_dropout,
        num_heads=encoder.config.num_heads if config.pooling == "attention" else 1,
    )
    weights = class_weights(y, len(vocab.classes)) if config.balance == "loss" else None
    model = Classifier(
        encoder,
        head,
        vocab.classes,
        class_weights=weights,
        sequence_dropout=config.sequence_dropout,
        label_smoothing=config.label_smoothing,
    )
    groups = finetune_param_groups(model, config)

    def val_logs(m: torch.nn.Module) -> dict[str, float]:
        metrics, _ = evaluate_classifier(
            m, val_m, pre, cache_dir=cache_dir, batch_size=config.batch_size, n_boot=0
        )
        return {
            f"val/{k}": metrics[k]["value"]
            for k in ("auc_macro", "balanced_accuracy", "f1_macro", "kappa")
            if k in metrics and metrics[k]["value"] is not None
        }

    def final_evaluation(m: torch.nn.Module) -> FinalEvaluation:
        metrics, pred = evaluate_classifier(
            m,
            val_m,
            pre,
            cache_dir=cache_dir,
            batch_size=config.batch_size,
            n_boot=config.n_boot,
            seed=config.seed,
        )
        return metrics, {"val_predictions.csv": pred.to_csv(index=False)}, {}

    return fit_and_save(
        model,
        dataset,
        config,
        acc,
        task="classify",
        groups=groups,
        source=src,
        split=run.split,
        n_train=len(train_cases),
        n_val=len(run.val_cases),
        val_logs=val_logs if val_m is not None else None,
        final_evaluation=final_evaluation if val_m is not None else None,
    )
