"""Fine-tuning configuration: the shared :class:`TrainerConfig` plus the data, model and head options.

Loaded like pretraining's (dataclass defaults < ``--config FILE`` < ``--set key=value`` < flags) with
:func:`mrfound.pretrain.config.apply_overrides`; the resolved config is saved as ``RUN/config.json``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mrfound.models.config import HEAD_POOLING, SKIP_SOURCES
from mrfound.pretrain.config import TrainerConfig, _check, _finite, _is_int

RANDOM_PREFIX = "random:"
"""``--checkpoint random:<size>``: the registry architecture ``<size>`` at random init (no weights)."""

TASKS = ("classify", "segment")
BALANCE = ("loss", "sampler", "none")
# sequence-dropout augmentation when --sequence-dropout is not given, per task
DEFAULT_SEQUENCE_DROPOUT = {"classify": 0.25, "segment": 0.0}


@dataclass
class FinetuneConfig(TrainerConfig):
    """``mrfound finetune`` settings (fields of :class:`TrainerConfig` plus these).

    Attributes:
        task: ``classify`` (lesion class from a lesion-centred ROI) or ``segment`` (liver + lesion).
        checkpoint: Pretrained checkpoint (folder, registry name, ``hf://``), or ``random:<size>``.
        manifest: Training manifest (labelled cases; masks for ``segment``).
        val_manifest: Validation manifest; when empty ``val_fraction`` of the subjects are held out.
        val_fraction: Share of subjects held out for validation (stratified, grouped); 0 = none.
        labels_fraction: Share of the labelled training cases used (stratified per class, seeded,
            nested: a smaller fraction is a subset of a larger one); for label-efficiency runs.
        from_scratch: Same architecture, random init (the supervised baseline).
        model: Registry size for ``from_scratch`` without a checkpoint.
        model_overrides: Encoder fields to change in that case (e.g. ``{"depth": 2}``).
        epochs: If set, ``steps = ceil(epochs * training items / batch_size)``.
        layer_decay: Layer-wise LR decay (1 = off).
        freeze_encoder: Train the head only.
        head_only_steps: Linear-probe-then-fine-tune (LP-FT, Kumar et al. 2022): for the first this many
            steps only the head trains (the encoder's learning rate is 0), then the whole model, the
            encoder with its own warm-up and cosine over the remaining steps. A head fitted first on
            frozen features changes the pretrained features less than a random head's gradients do.
        sequence_dropout: Probability of removing each available sequence during training (>= 1 kept).
            ``None`` (default) resolves in :meth:`validate` to 0.25 for ``classify`` (the recipe of the
            phenotype benchmarks, and what trains the per-sequence head's "missing" vectors for
            sequences the cohort always has) and 0 for ``segment``.
        balance: Class balancing: ``loss`` (inverse-frequency CE weights), ``sampler`` (class-balanced
            resampling) or ``none``.
        pooling: Classification pooling, ``centre_per_sequence`` (default: the central half of the lesion
            ROI averaged per sequence, concatenated), ``mean``, ``centre`` (that central mean over all
            sequences together) or ``attention``. The per-sequence head is the default because it
            fine-tuned best for all four encoders measured (+0.09 to +0.17 macro AUC over ``mean``,
            README "Fine-tuned"); DESIGN §4's mean pooling stays available.
        head_dropout: Dropout before the classification layer.
        label_smoothing: Cross-entropy label smoothing.
        feature_size: Width of the segmentation decoder's full-resolution stage.
        skip_source: Segmentation decoder's intermediate skips: ``image`` (a strided conv pyramid over
            the image, the default) or ``tokens`` (encoder blocks, UNETR); see ``SegmentationHead``.
            ``image`` is the default because it segments far better after short fine-tuning: phantom
            lesion Dice 0.38 vs 0.08 (liver 0.93 vs 0.92) after 150 steps; CHAOS liver Dice 0.65 vs
            0.62 on one fold after 5 minutes at feature size 8 (one-off runs of
            ``benchmarks/chaos_segmentation.py``'s training loop).
        samples_per_case: Random crops per case per epoch (segmentation); plus one lesion-centred crop.
        background_crops: Share of those random crops centred on any voxel of the volume instead of a
            body voxel (segmentation), so that training also sees windows that are mostly air, as
            sliding-window inference does at the volume borders. Off by default: in a check at the
            demo's budget (136 steps, 4 mm, 4 phantom volumes) 0.2 vs 0 gave liver Dice 0.744 vs 0.731
            and about the same air labelled foreground (1199 vs 1355 voxels), i.e. no clear effect.
        intensity_augment: Probability that a training crop gets a random gamma (0.5-2) and gain
            (0.8-1.25) per available sequence (:func:`mrfound.data.augment.augment_intensity`), for
            cohorts whose normalised intensities vary between subjects more than the training subjects
            show. Off by default; measured on CHAOS in the README.
        organ_augment: Probability that the liver of a training crop gets its own random gain (0.35-1.5)
            per available sequence (:func:`mrfound.data.augment.augment_organ_contrast`), segmentation
            only: a liver darker or brighter than its surroundings (iron, fat) is still liver. Off by
            default; measured on CHAOS in the README.
        spatial_augment: Probability that a training crop is rotated (+-15 degrees per axis) and zoomed
            (0.85-1.15) with its mask (:func:`mrfound.data.augment.augment_spatial`), both tasks: a dozen
            training subjects show a dozen organ tilts and sizes. Off by default; measured on CHAOS in the
            README.
        sw_overlap: Sliding-window overlap for segmentation validation.
        sw_batch_size: Windows per forward pass in sliding-window inference.
        val_max_cases: Cap on the validation cases (the first ones of the held-out set); ``None`` = all.
            Whole-volume sliding-window validation is the slow part of segmentation runs on CPU.
        spacing: Grid spacing in mm; ``None`` = the checkpoint's preprocessing spacing (the crop edge
            in voxels is always the encoder's ``img_size``).
        preprocess: :class:`mrfound.data.preprocess.PreprocessConfig` fields changed from the
            checkpoint's (or from the defaults for ``random:`` / ``--from-scratch`` without one), e.g.
            ``{"foreground": "otsu"}``; ``roi_size`` is the encoder's and cannot be set.
        cache_dir: Preprocessing cache (default ``RUN/cache``).
        eval_every: Steps between validations (0 = only at the end).
        n_boot: Bootstrap resamples for the validation CIs.
    """

    task: str = "classify"
    checkpoint: str = ""
    manifest: str = ""
    val_manifest: str = ""
    val_fraction: float = 0.2
    labels_fraction: float = 1.0
    from_scratch: bool = False
    model: str = "tiny"
    model_overrides: dict[str, Any] = field(default_factory=dict)
    epochs: float | None = None
    layer_decay: float = 0.75
    freeze_encoder: bool = False
    head_only_steps: int = 0
    sequence_dropout: float | None = None
    balance: str = "loss"
    pooling: str = "centre_per_sequence"
    head_dropout: float = 0.0
    label_smoothing: float = 0.0
    feature_size: int = 16
    skip_source: str = "image"
    samples_per_case: int = 2
    background_crops: float = 0.0
    intensity_augment: float = 0.0
    organ_augment: float = 0.0
    spatial_augment: float = 0.0
    sw_overlap: float = 0.25
    sw_batch_size: int = 4
    val_max_cases: int | None = None
    spacing: float | None = None
    preprocess: dict[str, Any] = field(default_factory=dict)
    cache_dir: str | None = None
    eval_every: int = 0
    n_boot: int = 200
    # fine-tuning defaults that differ from pretraining
    steps: int = 300
    lr: float = 5e-4
    betas: tuple[float, float] = (0.9, 0.999)
    save_every: int = 0
    keep_checkpoints: int = 1
    log_every: int = 10

    def validate(self) -> None:
        """Check ranges (see :meth:`TrainerConfig.validate`) and the fine-tuning fields."""
        super().validate()
        _check(self.task in TASKS, "task", self.task, f"must be one of {', '.join(TASKS)}")
        _check(bool(self.manifest), "manifest", self.manifest, "a training manifest is required (--manifest)")
        _check(
            bool(self.checkpoint) or self.from_scratch,
            "checkpoint",
            self.checkpoint,
            "a checkpoint is required unless --from-scratch is given",
        )
        _check(
            _finite(self.val_fraction) and 0 <= self.val_fraction < 1,
            "val_fraction",
            self.val_fraction,
            "must be in [0, 1)",
        )
        _check(
            _finite(self.labels_fraction) and 0 < self.labels_fraction <= 1,
            "labels_fraction",
            self.labels_fraction,
            "must be in (0, 1]",
        )
        if self.epochs is not None:
            _check(_finite(self.epochs) and self.epochs > 0, "epochs", self.epochs, "must be > 0")
        _check(
            _finite(self.layer_decay) and 0 < self.layer_decay <= 1,
            "layer_decay",
            self.layer_decay,
            "must be in (0, 1]",
        )
        if self.sequence_dropout is None:  # resolved here so the recorded config holds the number used
            self.sequence_dropout = DEFAULT_SEQUENCE_DROPOUT.get(self.task, 0.0)
        _check(
            _finite(self.sequence_dropout) and 0 <= self.sequence_dropout < 1,
            "sequence_dropout",
            self.sequence_dropout,
            "must be in [0, 1)",
        )
        _check(self.balance in BALANCE, "balance", self.balance, f"must be one of {', '.join(BALANCE)}")
        _check(
            _is_int(self.head_only_steps) and self.head_only_steps >= 0,
            "head_only_steps",
            self.head_only_steps,
            "must be an integer >= 0",
        )
        _check(
            self.pooling in HEAD_POOLING,
            "pooling",
            self.pooling,
            f"must be one of {', '.join(HEAD_POOLING)}",
        )
        _check(
            _finite(self.head_dropout) and 0 <= self.head_dropout < 1,
            "head_dropout",
            self.head_dropout,
            "must be in [0, 1)",
        )
        _check(
            _finite(self.label_smoothing) and 0 <= self.label_smoothing < 1,
            "label_smoothing",
            self.label_smoothing,
            "must be in [0, 1)",
        )
        _check(
            _is_int(self.feature_size) and self.feature_size > 0,
            "feature_size",
            self.feature_size,
            "must be a positive integer",
        )
        _check(
            self.skip_source in SKIP_SOURCES,
            "skip_source",
            self.skip_source,
            f"must be one of {', '.join(SKIP_SOURCES)}",
        )
        _check(
            _is_int(self.samples_per_case) and self.samples_per_case > 0,
            "samples_per_case",
            self.samples_per_case,
            "must be a positive integer",
        )
        _check(
            _finite(self.background_crops) and 0 <= self.background_crops <= 1,
            "background_crops",
            self.background_crops,
            "must be in [0, 1]",
        )
        _check(
            _finite(self.intensity_augment) and 0 <= self.intensity_augment <= 1,
            "intensity_augment",
            self.intensity_augment,
            "must be in [0, 1]",
        )
        _check(
            _finite(self.organ_augment) and 0 <= self.organ_augment <= 1,
            "organ_augment",
            self.organ_augment,
            "must be in [0, 1]",
        )
        _check(
            _finite(self.spatial_augment) and 0 <= self.spatial_augment <= 1,
            "spatial_augment",
            self.spatial_augment,
            "must be in [0, 1]",
        )
        _check(
            self.organ_augment == 0 or self.task == "segment",
            "organ_augment",
            self.organ_augment,
            "applies to --task segment only (it scales the liver of the training masks)",
        )
        _check(
            "roi_size" not in self.preprocess,
            "preprocess.roi_size",
            self.preprocess.get("roi_size"),
            "the crop is the encoder's img_size (set model_overrides.img_size for a random encoder)",
        )
        _check(
            _finite(self.sw_overlap) and 0 <= self.sw_overlap < 1,
            "sw_overlap",
            self.sw_overlap,
            "must be in [0, 1)",
        )
        _check(
            _is_int(self.sw_batch_size) and self.sw_batch_size > 0,
            "sw_batch_size",
            self.sw_batch_size,
            "must be a positive integer",
        )
        if self.val_max_cases is not None:
            _check(
                _is_int(self.val_max_cases) and self.val_max_cases > 0,
                "val_max_cases",
                self.val_max_cases,
                "must be a positive integer or null",
            )
        if self.spacing is not None:
            _check(_finite(self.spacing) and self.spacing > 0, "spacing", self.spacing, "must be > 0")
        _check(
            _is_int(self.eval_every) and self.eval_every >= 0, "eval_every", self.eval_every, "must be >= 0"
        )
        _check(_is_int(self.n_boot) and self.n_boot >= 0, "n_boot", self.n_boot, "must be >= 0")
