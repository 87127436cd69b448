"""Shared pieces of probing and fine-tuning: getting an encoder, holding out validation subjects,
label-fraction subsets, class weights, class-balanced resampling, and the start (:func:`prepare_run`,
:func:`set_steps`, :func:`finetune_param_groups`) and the train-evaluate-save end (:func:`fit_and_save`)
that both fine-tuning tasks share."""

from __future__ import annotations

import hashlib
import math
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from mrfound.errors import CheckpointError, ConfigError
from mrfound.finetune.config import RANDOM_PREFIX
from mrfound.utils.io import atomic_write_json, atomic_write_text, file_sha256


@dataclass
class EncoderSource:
    """An encoder with what came with it.

    Attributes:
        encoder: The :class:`mrfound.models.encoder.MultiSequenceViT`.
        checkpoint_config: The checkpoint's ``config.json`` (``None`` for ``random:<size>``).
        preprocess: The :class:`PreprocessConfig` to feed it (the checkpoint's, or defaults with
            ``roi_size`` = the encoder's ``img_size``).
        vocabulary: The checkpoint's :class:`Vocabulary` (default vocabulary with the encoder's sequences).
        key: A short id of the weights (hash of the weights file, or of the random-init recipe), for
            feature caches.
        description: Human-readable origin ("checkpoint X", "random init of tiny, seed 0").
        completer: The masked-modality autoencoder whose ``encoder`` is ``encoder`` (its decoder
            synthesises absent sequences, :meth:`~mrfound.models.mae.MaskedModalityAutoencoder.reconstruct`);
            only loaded on request (``with_decoder``), else ``None``.
    """

    encoder: Any
    checkpoint_config: dict[str, Any] | None
    preprocess: Any
    vocabulary: Any
    key: str
    description: str
    completer: Any = None


def _file_hash(path: Path) -> str:
    return file_sha256(path)[:16]


def _preprocess_for(encoder: Any, cfg: Mapping[str, Any] | None) -> Any:
    from mrfound.data.preprocess import PreprocessConfig

    img = encoder.config.img_shape
    if len(set(img)) != 1:
        raise ConfigError(f"fine-tuning needs a cubic encoder ROI, got img_size {list(img)}")
    known = set(PreprocessConfig.__dataclass_fields__) - {"roi_size"}
    saved = {k: v for k, v in ((cfg or {}).get("preprocessing") or {}).items() if k in known}
    # the crop must be what the encoder takes
    return replace(PreprocessConfig.from_saved(saved), roi_size=int(img[0]))


def load_encoder(
    checkpoint: str | os.PathLike,
    *,
    random_init: bool = False,
    seed: int = 0,
    model_overrides: Mapping[str, Any] | None = None,
    with_decoder: bool = False,
) -> EncoderSource:
    """The encoder of a checkpoint (pretrained MAE, bare encoder, or fine-tuned wrapper), or a random one.

    Args:
        checkpoint: Checkpoint folder / registry name / ``hf://`` id, or ``random:<size>`` (a registry
            size at random init, e.g. ``random:tiny``).
        random_init: Keep the checkpoint's architecture and preprocessing but re-initialise the
            weights (the random-init baseline of the same architecture).
        seed: Seed of a random initialisation.
        model_overrides: Encoder fields changed for ``random:<size>`` (e.g. ``{"img_size": 32}``).
        with_decoder: Also return the whole masked-modality autoencoder as ``completer`` (re-initialised
            with the encoder under ``random_init``; default decoder for ``random:<size>``). The encoder's
            weights are the same as without it: the encoder is the first module the autoencoder builds.

    Raises:
        CheckpointError: unreadable checkpoint, one without an encoder, or (``with_decoder``) one without
            a decoder (a bare encoder or a fine-tuned model).
    """
    from mrfound.data.sequences import Vocabulary
    from mrfound.models.encoder import MultiSequenceViT
    from mrfound.models.mae import MaskedModalityAutoencoder

    text = os.fspath(checkpoint)
    completer = None
    if text.startswith(RANDOM_PREFIX):
        from mrfound.models.registry import get_model_config

        size = text[len(RANDOM_PREFIX) :]
        enc_cfg = get_model_config(size, **dict(model_overrides or {}))
        torch.manual_seed(seed)
        if with_decoder:
            completer = MaskedModalityAutoencoder(enc_cfg).eval()
            encoder = completer.encoder
        else:
            encoder = MultiSequenceViT(enc_cfg)
        recipe = f"{size}|{seed}|{sorted(enc_cfg.to_dict().items())}"
        return EncoderSource(
            encoder,
            None,
            _preprocess_for(encoder, None),
            Vocabulary(sequences=enc_cfg.sequences),
            "random-" + hashlib.sha256(recipe.encode()).hexdigest()[:12],
            f"random init of {size}, seed {seed}",
            completer,
        )
    from mrfound.models.checkpoint import WEIGHTS_NAME, load_model, resolve_checkpoint

    folder = resolve_checkpoint(text)
    model, cfg = load_model(folder)
    if isinstance(model, MultiSequenceViT):
        encoder = model
    elif isinstance(getattr(model, "encoder", None), MultiSequenceViT):
        encoder = model.encoder
    else:
        raise CheckpointError(
            f"{text}: architecture {cfg.get('architecture')!r} has no multi-sequence encoder"
        )
    if with_decoder:
        if not isinstance(model, MaskedModalityAutoencoder):
            raise CheckpointError(
                f"{text}: architecture {cfg.get('architecture')!r} has no decoder to synthesise absent "
                "sequences; use a pretraining checkpoint"
            )
        completer = model
    vocab = (
        Vocabulary.from_dict(cfg["vocabulary"])
        if cfg.get("vocabulary")
        else Vocabulary(sequences=encoder.config.sequences)
    )
    key = _file_hash(folder / WEIGHTS_NAME)
    desc = f"checkpoint {folder}"
    if random_init:
        torch.manual_seed(seed)
        if completer is not None:
            completer = MaskedModalityAutoencoder(completer.encoder_config, completer.config)
            encoder = completer.encoder
        else:
            encoder = MultiSequenceViT(encoder.config)
        key = f"random-{key}-{seed}"
        desc = f"random init of the architecture of {folder}, seed {seed}"
    encoder.eval()
    if completer is not None:
        completer.eval()
    return EncoderSource(encoder, cfg, _preprocess_for(encoder, cfg), vocab, key, desc, completer)


def holdout_split(
    labels: Sequence[str | None], subjects: Sequence[str], fraction: float, seed: int
) -> np.ndarray:
    """Boolean validation mask holding out about ``fraction`` of the subjects, stratified by class.

    Uses ``StratifiedGroupKFold(round(1 / fraction))`` and takes its first fold, so no subject is on
    both sides. Unlabelled rows are never in validation. ``fraction == 0`` gives no validation.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    n = len(labels)
    val = np.zeros(n, dtype=bool)
    if fraction <= 0:
        return val
    idx = np.array([i for i, lab in enumerate(labels) if lab], dtype=int)
    k = max(2, int(round(1 / fraction)))
    groups = np.asarray(subjects)[idx]
    if len(np.unique(groups)) < k:
        raise ConfigError(
            f"val_fraction {fraction} needs at least {k} labelled subjects; have "
            f"{len(np.unique(groups))} (lower --val-fraction or pass --val-manifest)"
        )
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        _, test = next(splitter.split(np.zeros(len(idx)), np.asarray(labels)[idx], groups))
    val[idx[test]] = True
    return val


def labels_fraction_subset(labels: Sequence[str], fraction: float, seed: int) -> np.ndarray:
    """Indices of a stratified, seeded, nested subset of labelled cases.

    Per class, ``max(1, round(fraction * n_class))`` cases are kept: the first ones of a permutation
    that depends only on ``(seed, class)``, so a smaller fraction is always a subset of a larger one
    and the choice does not depend on the other classes.

    Args:
        labels: Class name of each case (all labelled).
        fraction: Share kept, in (0, 1].
        seed: Seed.

    Returns:
        Sorted int indices into ``labels``.
    """
    if not 0 < fraction <= 1:
        raise ConfigError(f"labels fraction must be in (0, 1], got {fraction}")
    labels = list(labels)
    keep: list[int] = []
    for cls in sorted(set(labels)):
        idx = np.array([i for i, lab in enumerate(labels) if lab == cls])
        digest = hashlib.sha256(f"{seed}|{cls}".encode()).digest()
        rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
        perm = idx[rng.permutation(len(idx))]
        keep.extend(perm[: max(1, int(round(fraction * len(idx))))].tolist())
    return np.array(sorted(keep), dtype=int)


def class_weights(labels: Sequence[int], num_classes: int) -> torch.Tensor:
    """Inverse-frequency weights normalised to mean 1 over the present classes (absent classes 0)."""
    counts = np.bincount(np.asarray(labels, dtype=int), minlength=num_classes).astype(np.float64)
    w = np.where(counts > 0, 1.0 / np.maximum(counts, 1), 0.0)
    present = counts > 0
    w[present] *= present.sum() / w[present].sum()
    return torch.tensor(w, dtype=torch.float32)


class BalancedDataset(Dataset):
    """Class-balanced resampling of a dataset: each epoch draws ``len(base)`` items with replacement,
    every class equally likely; the draw depends only on ``(seed, epoch)`` (the shared trainer calls
    :meth:`set_epoch`).

    Args:
        base: The dataset.
        labels: Class index of each item.
        seed: Seed.
    """

    def __init__(self, base: Dataset, labels: Sequence[int], seed: int = 0) -> None:
        self.base, self.labels, self.seed = base, np.asarray(labels, dtype=int), int(seed)
        counts = np.bincount(self.labels)
        self.p = 1.0 / counts[self.labels]
        self.p /= self.p.sum()
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Draw the items of ``epoch`` (and forward the epoch to the base dataset)."""
        self.epoch = int(epoch)
        rng = np.random.default_rng([self.seed, self.epoch, 0xBA1])
        self.index = rng.choice(len(self.labels), size=len(self.labels), replace=True, p=self.p)
        if hasattr(self.base, "set_epoch"):
            self.base.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> Any:
        return self.base[int(self.index[i])]


class ConcatWithEpoch(torch.utils.data.ConcatDataset):
    """``ConcatDataset`` that forwards :meth:`set_epoch` to its parts."""

    def set_epoch(self, epoch: int) -> None:
        """Forward the epoch (new random crops)."""
        for d in self.datasets:
            if hasattr(d, "set_epoch"):
                d.set_epoch(epoch)


def resolve_steps(steps: int, epochs: float | None, n_items: int, batch_size: int, processes: int = 1) -> int:
    """``steps``, or ``ceil(epochs * n_items / (batch_size * processes))`` when ``epochs`` is set."""
    if epochs is None:
        return int(steps)
    return max(1, math.ceil(epochs * n_items / (batch_size * processes)))


def hold_encoder(
    groups: list[dict[str, Any]], model: torch.nn.Module, steps: int, total_steps: int
) -> list[dict[str, Any]]:
    """Parameter groups in which everything outside ``model.head`` stays at learning rate 0 for the first
    ``steps`` of ``total_steps`` (the Trainer's ``hold_steps``: linear-probe-then-fine-tune).

    A group mixing head and encoder parameters (layer-wise decay puts the encoder's final norm beside
    the head) is split in two with the same settings.

    Raises:
        ConfigError: ``steps`` would leave the encoder no step to train.
    """
    if steps <= 0:
        return groups
    if steps >= total_steps:
        raise ConfigError(f"head_only_steps ({steps}) must be below the training steps ({total_steps})")
    head = {id(p) for p in model.head.parameters()}
    out = []
    for g in groups:
        params = list(g["params"])
        trained = [p for p in params if id(p) in head]
        held = [p for p in params if id(p) not in head]
        if trained:
            out.append({**g, "params": trained})
        if held:
            out.append({**g, "params": held, "hold_steps": int(steps)})
    return out


def source_for(config: Any) -> EncoderSource:
    """The encoder a fine-tuning run starts from (pretrained, or random for ``from_scratch``)."""
    if config.checkpoint:
        src = load_encoder(
            config.checkpoint,
            random_init=config.from_scratch,
            seed=config.seed,
            model_overrides=config.model_overrides,
        )
    else:
        src = load_encoder(
            f"{RANDOM_PREFIX}{config.model}", seed=config.seed, model_overrides=config.model_overrides
        )
    if config.preprocess:
        from mrfound.data.preprocess import PreprocessConfig

        try:
            src.preprocess = PreprocessConfig.from_dict({**src.preprocess.to_dict(), **config.preprocess})
        except (ConfigError, TypeError, ValueError) as e:
            raise ConfigError(f"config key 'preprocess': {e}") from None
    if config.spacing is not None:
        src.preprocess = replace(src.preprocess, spacing=float(config.spacing))
    return src


def split_cases(
    config: Any, manifest: Any, usable: Sequence[bool], strata: Sequence[str]
) -> tuple[list[Any], list[Any], pd.DataFrame]:
    """Training and validation cases plus a ``split.csv`` table (case, subject, label, role).

    Validation: ``val_manifest`` if given, else a stratified subject-grouped holdout of
    ``val_fraction``. The labels fraction is applied to the training part only.
    """
    from mrfound.data.manifest import read_manifest

    cases = [c for c, u in zip(manifest.cases, usable) if u]
    strata = [s for s, u in zip(strata, usable) if u]
    if not cases:
        raise ConfigError(f"manifest {config.manifest}: no usable case for task {config.task!r}")
    role = np.array(["train"] * len(cases), dtype=object)
    val_cases: list[Any] = []
    if config.val_manifest:
        vm = read_manifest(config.val_manifest, vocabulary=manifest.vocabulary)
        val_cases = list(vm.cases)
        overlap = {c.subject for c in val_cases} & {c.subject for c in cases}
        if overlap:
            raise ConfigError(f"subjects {sorted(overlap)[:3]} are in both --manifest and --val-manifest")
    elif config.val_fraction > 0:
        val = holdout_split(strata, [c.subject for c in cases], config.val_fraction, config.seed)
        role[val] = "val"
        val_cases = [c for c, v in zip(cases, val) if v]
    if config.val_max_cases is not None and len(val_cases) > config.val_max_cases:
        dropped = {c.case for c in val_cases[config.val_max_cases :]}
        val_cases = val_cases[: config.val_max_cases]
        role[[c.case in dropped for c in cases]] = "unused"
    train_idx = np.flatnonzero(role == "train")
    keep = train_idx[
        labels_fraction_subset([strata[i] for i in train_idx], config.labels_fraction, config.seed)
    ]
    role[np.setdiff1d(train_idx, keep)] = "unused"
    train_cases = [cases[i] for i in keep]
    table = pd.DataFrame(
        {
            "case": [c.case for c in cases],
            "subject": [c.subject for c in cases],
            "label": [c.label or "" for c in cases],
            "role": role,
        }
    )
    if config.val_manifest:
        table = pd.concat(
            [
                table,
                pd.DataFrame(
                    {
                        "case": [c.case for c in val_cases],
                        "subject": [c.subject for c in val_cases],
                        "label": [c.label or "" for c in val_cases],
                        "role": "val",
                    }
                ),
            ]
        )
    return train_cases, val_cases, table


@dataclass
class RunInputs:
    """What a fine-tuning task starts from, built the same way for both tasks by :func:`prepare_run`.

    Attributes:
        source: The encoder, with its vocabulary and preprocessing.
        train_cases: Training cases (after the labels fraction).
        val_cases: Validation cases (empty without validation).
        split: The ``split.csv`` table (case, subject, label, role).
        train_manifest: ``train_cases`` as a manifest.
        val_manifest: ``val_cases`` as a manifest, ``None`` without validation.
        cache_dir: Preprocessed-volume cache (``config.cache_dir`` or ``RUN/cache``).
        accelerator: The run's Accelerate accelerator.
    """

    source: EncoderSource
    train_cases: list[Any]
    val_cases: list[Any]
    split: pd.DataFrame
    train_manifest: Any
    val_manifest: Any | None
    cache_dir: str
    accelerator: Any


def prepare_run(
    config: Any,
    usable: Callable[[Any], bool],
    stratum: Callable[[Any], str],
    *,
    scorable: Callable[[Any], bool] | None = None,
) -> RunInputs:
    """Validate ``config``, seed, load the encoder and the manifest, split the cases, make the accelerator.

    Args:
        config: A :class:`~mrfound.finetune.config.FinetuneConfig`.
        usable: Which manifest cases the task can train on (a label, a mask).
        stratum: Each usable case's stratum for the validation holdout and the labels fraction.
        scorable: If given, validation keeps only the cases it accepts (segmentation cannot score a case
            without a mask); otherwise every validation case is kept (and predicted, scored or not).
    """
    import accelerate.utils

    from mrfound.data.manifest import Manifest, read_manifest
    from mrfound.pretrain.trainer import make_accelerator

    config.validate()
    accelerate.utils.set_seed(config.seed)
    src = source_for(config)
    vocab = src.vocabulary
    manifest = read_manifest(config.manifest, vocabulary=vocab)
    ok = [usable(c) for c in manifest.cases]
    train_cases, val_cases, split = split_cases(
        config, manifest, ok, [stratum(c) if u else "" for c, u in zip(manifest.cases, ok)]
    )
    if scorable is not None:
        val_cases = [c for c in val_cases if scorable(c)]
    return RunInputs(
        source=src,
        train_cases=train_cases,
        val_cases=val_cases,
        split=split,
        train_manifest=Manifest.from_cases(train_cases, manifest.root, vocab),
        val_manifest=Manifest.from_cases(val_cases, manifest.root, vocab) if val_cases else None,
        cache_dir=config.cache_dir or str(Path(config.out) / "cache"),
        accelerator=make_accelerator(config),
    )


def set_steps(config: Any, n_items: int, processes: int) -> None:
    """Resolve ``config.steps`` (from ``epochs`` when set) and keep the warm-up within it, in place."""
    config.steps = resolve_steps(config.steps, config.epochs, n_items, config.batch_size, processes)
    if config.warmup_steps is not None and config.warmup_steps > config.steps:
        config.warmup_steps = config.steps


def finetune_param_groups(model: torch.nn.Module, config: Any) -> list[dict[str, Any]]:
    """The optimizer's parameter groups: layer-wise LR decay over ``model``, the encoder frozen
    (``freeze_encoder``) or held at learning rate 0 for ``head_only_steps`` (:func:`hold_encoder`).

    Call after :func:`set_steps` (the hold is checked against the resolved steps).
    """
    from mrfound.models.heads import param_groups_layer_decay

    if config.freeze_encoder:
        model.encoder.requires_grad_(False)
    groups = param_groups_layer_decay(model, config.weight_decay, config.layer_decay)
    if not config.freeze_encoder:
        groups = hold_encoder(groups, model, config.head_only_steps, config.steps)
    return groups


FinalEvaluation = tuple[dict[str, Any], dict[str, str], dict[str, Any]]
"""What a task's final validation returns: its metrics, files for ``RUN`` (name -> text) and extra keys of
``val_metrics.json``."""


def fit_and_save(
    model: torch.nn.Module,
    dataset: Dataset,
    config: Any,
    accelerator: Any,
    *,
    task: str,
    groups: list[dict[str, Any]],
    source: EncoderSource,
    split: Any,
    n_train: int,
    n_val: int,
    val_logs: Callable[[torch.nn.Module], dict[str, float]] | None,
    final_evaluation: Callable[[torch.nn.Module], FinalEvaluation] | None,
    extra_provenance: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Train ``model`` with the shared trainer, then write the run's split, final validation and checkpoint.

    ``task`` (``classify`` / ``segment``) is recorded as given, not read from ``config``: the task
    functions are also called directly with a config whose ``task`` was left at its default.

    Every ``config.eval_every`` steps the main process logs ``val_logs(model)`` (kept in the history of
    ``val_metrics.json``); after the last step it writes ``split.csv``, the files and metrics of
    ``final_evaluation`` and ``RUN/final`` (with the vocabulary, preprocessing and a provenance record:
    task, encoder source, from-scratch flag, label fraction, case counts, steps, seed, run folder, manifest,
    plus ``extra_provenance``). The other processes wait for it.

    Returns:
        Summary: ``final``, ``n_train``, ``n_val``, ``steps``, ``train_result`` (last logs),
        ``val_metrics`` (``None`` without a final evaluation) and ``source``.
    """
    from mrfound.data.dataset import collate_cases
    from mrfound.models.checkpoint import save_checkpoint
    from mrfound.pretrain.trainer import EveryN, Trainer

    run = Path(config.out)
    history: list[dict[str, Any]] = []

    def validate(trainer: Trainer) -> None:
        if val_logs is not None and trainer.is_main:
            logs = val_logs(trainer.eval_model())
            trainer.log_metrics(logs)
            history.append({"step": trainer.step, **logs})
        trainer.accelerator.wait_for_everyone()

    callbacks = [EveryN(config.eval_every, validate, at_end=False)] if config.eval_every else []
    trainer = Trainer(
        model,
        dataset,
        config,
        collate_fn=collate_cases,
        param_groups=groups,
        callbacks=callbacks,
        accelerator=accelerator,
    )
    result = trainer.fit()
    final_model = trainer.eval_model()
    summary: dict[str, Any] = {
        "final": str(run / "final"),
        "n_train": n_train,
        "n_val": n_val,
        "steps": config.steps,
        "train_result": result.last_logs,
        "val_metrics": None,
        "source": source.description,
    }
    if trainer.is_main:
        atomic_write_text(run / "split.csv", split.to_csv(index=False))
        if final_evaluation is not None:
            metrics, files, extra = final_evaluation(final_model)
            for name, text in files.items():
                atomic_write_text(run / name, text)
            atomic_write_json(
                run / "val_metrics.json",
                {"final": metrics, "history": history, "n_val": n_val, "step": trainer.step, **extra},
            )
            summary["val_metrics"] = metrics
        save_checkpoint(
            run / "final",
            final_model,
            {
                "vocabulary": source.vocabulary.to_dict(),
                "preprocessing": source.preprocess.to_dict(),
                "provenance": {
                    "task": task,
                    "source": source.description,
                    "from_scratch": config.from_scratch,
                    "labels_fraction": config.labels_fraction,
                    "n_train": n_train,
                    "n_val": n_val,
                    "steps": trainer.step,
                    "seed": config.seed,
                    "run": str(run),
                    "manifest": str(Path(config.manifest).resolve()),
                    **(extra_provenance or {}),
                },
            },
        )
    accelerator.wait_for_everyone()
    return summary
